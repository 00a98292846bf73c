"""The Python entry point: run an experiment from a file or a dict, load a run directory.

import ivx
r = ivx.run("configs/activation_patching.yaml", prompts={"limit": 5})
r.results          # pandas DataFrame, one row per cell × prompt
r.summary["grid"]  # mean ± standard error per grid point
r.plot()           # the sweep figure of the main metric (a matplotlib Figure)
ivx.load_run("runs/20261122-140512_activation_patching").tensors["clean.prompt0"]
m = ivx.Model("ivx-toy")                    # load once, run many: m.run(config) = ivx.run(config, model=m)
m.cache("The city of", ["block_output.3"])  # activations by ivx site name (docs/readouts.md)
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

from ivx.core.errors import UserError
from ivx.model import cache as activations
from ivx.model import loading
from ivx.recipes import run as experiment
from ivx.results import gridplot, readouts, tracing, train_report
from ivx.results import tables as report


class Tensors(Mapping[str, Any]):
    """A run's tensors.safetensors, read one tensor at a time on access."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @cached_property
    def _keys(self) -> list[str]:
        from safetensors import safe_open

        if not self.path.is_file():
            return []
        with safe_open(str(self.path), framework="pt") as fh:
            return list(fh.keys())

    def __getitem__(self, key: str) -> Any:
        from safetensors import safe_open

        if key not in self._keys:
            raise KeyError(_missing_tensor(key, self._keys))
        with safe_open(str(self.path), framework="pt") as fh:
            return fh.get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def _missing_tensor(key: str, keys: list[str]) -> str:
    """Why `key` is not in a run's tensors: what is there, and which setting writes logits."""
    import difflib

    if not keys:
        there = "the run saved no tensors"
    else:
        near = difflib.get_close_matches(key, keys, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        shown = ", ".join(keys[:8]) + (f", … ({len(keys)} in all)" if len(keys) > 8 else "")
        there = f"{hint}keys: {shown}"
    return (
        f"no tensor {key!r} in this run; {there}. Logits (clean.promptN, cellN, ...) are saved only "
        "with output.logits: last or all (e.g. ivx.run(..., output={'logits': 'last'})); `collect` "
        "interventions save activations"
    )


class Run:
    """A run directory: its manifest, summary, results table, tensors and figures."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not (self.path / "manifest.json").is_file():
            raise FileNotFoundError(f"{self.path} is not an ivx run directory (no manifest.json)")

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, status={self.manifest.get('status')!r})"

    @property
    def manifest(self) -> dict[str, Any]:
        """manifest.json (versions, model, status, timings)."""
        return json.loads((self.path / "manifest.json").read_text())

    @cached_property
    def summary(self) -> dict[str, Any]:
        """summary.json (per grid point: mean, standard error and count of every metric)."""
        file = self.path / "summary.json"
        return json.loads(file.read_text()) if file.is_file() else {}

    @cached_property
    def results(self) -> Any:
        """results.jsonl as a pandas DataFrame: one row per cell × prompt."""
        import pandas as pd

        file = self.path / "results.jsonl"
        lines = file.read_text().splitlines() if file.is_file() else []
        return pd.DataFrame([json.loads(line) for line in lines if line.strip()])

    @cached_property
    def tensors(self) -> Tensors:
        """tensors.safetensors as a lazy mapping name → torch.Tensor."""
        return Tensors(self.path / "tensors.safetensors")

    def table(self) -> str:
        """The terminal table `ivx run` printed (trace tables for layer × position sweeps)."""

        summary = self.summary
        traces = summary.get("traces") or ({None: summary["trace"]} if summary.get("trace") else {})
        if traces:
            return "\n\n".join(
                (f"== {label} corruption ==\n" if label else "") + tracing.table_text(trace)
                for label, trace in traces.items()
            )
        if "points" in summary:  # an `ivx train` run
            return train_report.iia_table(summary)
        readout = readouts.table_text(summary)  # a readout run: its table below the metrics'
        return report.table(summary) + (f"\n\n{readout}" if readout else "")

    def plot(self, metric: str | None = None) -> Any:
        """The sweep figure of one metric (default: the main one); None for a single point."""

        computed = self.summary.get("metrics", [])
        grid = self.summary.get("grid") or []
        if metric is not None and metric not in computed and not any(metric in e for e in grid):
            raise KeyError(f"no metric {metric!r} in this run; metrics: {', '.join(computed) or 'none'}")
        name = metric or report.primary_metric(computed)
        return gridplot.figure(self.summary, name) if name else None


def load_run(path: str | Path) -> Run:
    """Open a run directory."""
    return Run(path)


def _flatten(prefix: str, value: Any) -> list[str]:
    if isinstance(value, dict) and value:
        return [item for k, v in value.items() for item in _flatten(f"{prefix}.{k}", v)]
    return [f"{prefix}={json.dumps(value)}"]


PATH_FIELDS = (("prompts", "file"),)
INTERVENTION_PATHS = ("vector", "bundle")


def _absolute(config: dict[str, Any], base: Path) -> dict[str, Any]:
    """A copy of a config dict whose relative file references point under `base`."""
    import copy

    out = copy.deepcopy(config)

    def fix(holder: Any, key: str) -> None:
        value = holder.get(key) if isinstance(holder, dict) else None
        if isinstance(value, str) and not value.startswith(("hf://", "$")) and not Path(value).is_absolute():
            holder[key] = str((base / value).resolve())

    fix(out.get("prompts"), "file")
    saes = [e for e in out.get("saes") or [] if isinstance(e, dict)]
    for entry in saes:
        fix(entry, "path")
    for iv in out.get("interventions") or []:
        for key in INTERVENTION_PATHS:
            fix(iv, key)
        if isinstance(iv, dict) and iv.get("sae") not in {e.get("name") for e in saes}:
            fix(iv, "sae")  # a directory, not the name of a `saes:` entry
        fix(iv.get("contrast") if isinstance(iv, dict) else None, "file")
    return out


def run(
    config: str | Path | dict[str, Any],
    *,
    out: str | Path | None = None,
    progress: bool = False,
    model: Model | dict[str, Any] | None = None,
    **overrides: Any,
) -> Run:
    """Run an experiment (a YAML path or a config dict) and return its Run.

    Keyword overrides are fields of the experiment file, e.g. `prompts={"limit": 5}` or
    `seed=3`; relative files in a dict resolve against the current directory. `model` reuses a
    loaded `ivx.Model` (it must be the model the config names) instead of loading one; a dict
    is the `model:` section's override, as before.
    """
    import tempfile

    import yaml

    if isinstance(model, dict):
        overrides, model = {"model": model, **overrides}, None
    sets = tuple(item for key, value in overrides.items() for item in _flatten(key, value))
    lm = model.lm if model is not None else None
    if model is not None:
        model.check_config(config, overrides)
    if isinstance(config, dict):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.yaml"
            path.write_text(yaml.safe_dump(_absolute(config, Path.cwd()), sort_keys=False))
            run_dir = experiment.run(path, sets, str(out) if out else None, progress=progress, lm=lm)
    else:
        run_dir = experiment.run(config, sets, str(out) if out else None, progress=progress, lm=lm)
    return Run(run_dir)


class ModelMismatch(UserError):
    """A config run on an `ivx.Model` that names another model."""


class Model:
    """A model loaded once (name, local directory or `ivx-toy`) for several runs and caches.

    m = ivx.Model("ivx-toy"); m.run("configs/logit_lens.yaml"); m.cache("The city of", ["block_output.3"])
    """

    def __init__(
        self, name: str = "ivx-toy", *, revision: str | None = None, dtype: str = "auto", device: str = "auto"
    ) -> None:
        self.name = name
        self.lm = loading.load(name, revision, dtype, device)

    def __repr__(self) -> str:
        info = self.lm.info
        return f"Model({self.name!r}, {info.model_type}, {info.n_layers} layers, device={self.lm.device})"

    @property
    def hf(self) -> Any:
        """The Hugging Face model (eval mode)."""
        return self.lm.model

    @property
    def tokenizer(self) -> Any:
        """The tokenizer."""
        return self.lm.tokenizer

    def sites(self) -> list[str]:
        """Every site name this model has (`embedding`, `component.layer`)."""
        return activations.valid_names(self.lm.info)

    def check_config(self, config: str | Path | dict[str, Any], overrides: dict[str, Any]) -> None:
        """ModelMismatch unless the config (with its overrides) names this model."""
        import yaml

        data = config if isinstance(config, dict) else yaml.safe_load(Path(config).read_text()) or {}
        spec = overrides.get("model") or data.get("model") or {}
        named = spec.get("name") if isinstance(spec, dict) else None
        if named is not None and loading.resolve_path(str(named)) != self.lm.path:
            raise ModelMismatch(
                f"the config names model {named!r} but this ivx.Model holds {self.name!r}; run it on this "
                f"model with model={{'name': {self.name!r}}}, or load ivx.Model({named!r})"
            )

    def run(self, config: str | Path | dict[str, Any], **kwargs: Any) -> Run:
        """`ivx.run` on this model (no reloading); keyword arguments as for `ivx.run`."""
        return run(config, model=self, **kwargs)

    def cache(self, prompts: str | list[str], sites: str | list[str]) -> activations.Cache:
        """The activations of `sites` over `prompts` (see `ivx.cache`)."""
        return activations.capture(self.lm, prompts, sites)


def cache(model: Model | str, prompts: str | list[str], sites: str | list[str]) -> activations.Cache:
    """Capture `sites` (ivx names like `block_output.3`, or TransformerLens hook names) over
    `prompts`: a Mapping name → tensor `[prompts, seq, ...]`. `model` is an `ivx.Model` or a name."""
    return (model if isinstance(model, Model) else Model(model)).cache(prompts, sites)
