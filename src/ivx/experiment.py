"""The `ivx run` recipe, top to bottom: config → model → plan → execute → run directory."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ivx import config as config_mod
from ivx import rundir
from ivx.config import ConfigError, LoadedConfig
from ivx.plan import Mode, Plan
from ivx.summary import contrast_warnings as _contrast_warnings
from ivx.summary import summarize

if TYPE_CHECKING:
    from ivx import backends
    from ivx.runner import Executor


@dataclass
class Prepared:
    """A config checked against its model, ready to execute."""

    cfg: LoadedConfig
    lm: Any
    prompts: list
    plan: Plan
    dropped: list[dict[str, Any]] | None = None
    label: str | None = None  # the corruption's name when `corrupt` lists several


def variants(cfg: LoadedConfig) -> list[tuple[str | None, LoadedConfig]]:
    """One config per corruption when `corrupt` is a list (labelled by kind), else the config."""
    corrupt = cfg.experiment.corrupt
    if not isinstance(corrupt, list):
        return [(None, cfg)]
    out: list[tuple[str | None, LoadedConfig]] = []
    kinds = [c.kind for c in corrupt]
    for i, single in enumerate(corrupt):
        label = single.kind if kinds.count(single.kind) == 1 else f"{single.kind}{i}"
        copy = dataclasses.replace(cfg, experiment=cfg.experiment.model_copy(update={"corrupt": single}))
        out.append((label, copy))
    return out


def prepare(path: str | Path, overrides: tuple[str, ...] = (), lm: Any = None) -> Prepared:
    """Validate the config, load the model, tokenize prompts and expand the plan.

    `lm` reuses an already loaded `models.LoadedModel` (library use: many configs, one model).
    Raises ConfigError (schema and model-aware problems) or models.ModelLoadError.
    """
    return prepare_all(path, overrides, lm)[0]


def prepare_all(
    path: str | Path,
    overrides: tuple[str, ...] = (),
    lm: Any = None,
    weights: bool = True,
    max_cells: int | None = None,
    mode: Mode = "run",
) -> list[Prepared]:
    """`prepare` for every corruption variant (one item unless `corrupt` is a list).

    `weights=False` checks against the model's structure only (meta device, nothing downloaded
    but its config and tokenizer); fact selection, which needs forward passes, is then skipped.
    `max_cells` refuses larger plans before they are built (their cells alone fill memory).
    """
    from ivx import checks, models, tokenization

    cfg = config_mod.load(path, overrides)
    spec = cfg.experiment.model
    load = (spec.name, spec.revision, spec.dtype, spec.device, spec.trust_remote_code, spec.device_map)
    if lm is None:
        # the structure first (meta device): a bad layer or position is reported before minutes
        # of loading a large model's weights
        try:
            lm = models.load(*load, weights=False)
        except models.MetaUnsupported:
            if not weights:
                raise
            lm = models.load(*load)  # its init needs real tensors: check after loading
    prompts = tokenization.for_config(cfg, lm.tokenizer)
    _check_files(cfg)
    checks.model_limits(cfg, lm, prompts, max_cells)
    if cfg.experiment.method == "attribution":
        from ivx import attribution

        attribution.check_model(cfg, lm)
    from ivx import pathpatch

    pathpatch.check_model(cfg, lm)
    out = _expand(cfg, lm, prompts, None, mode)  # raises ConfigError with every model-aware problem
    if weights and lm.device.type == "meta":
        lm = models.load(*load)
        out = [dataclasses.replace(prep, lm=lm) for prep in out]
    trace = cfg.experiment.trace
    if trace is not None and trace.select_correct and weights:
        prompts, dropped = select_correct(lm, prompts)
        if not prompts:
            raise ConfigError(
                [cfg.problem(("trace", "select_correct"), "the model predicts none of the targets")]
            )
        out = _expand(cfg, lm, prompts, dropped)
    return out


def _expand(
    cfg: LoadedConfig, lm: Any, prompts: list, dropped: list | None, mode: Mode = "run"
) -> list[Prepared]:
    """One Prepared per corruption variant, cell indices unique across variants."""
    from ivx import plan

    out = []
    offset = 0
    for label, variant in variants(cfg):
        expanded = plan.expand(variant, lm.info, prompts, mode)
        cells = tuple(dataclasses.replace(c, index=c.index + offset) for c in expanded.cells)
        offset += len(cells)
        out.append(Prepared(variant, lm, prompts, dataclasses.replace(expanded, cells=cells), dropped, label))
    return out


LARGE_TENSORS = 2 * 2**30  # bytes of tensors.safetensors above which a run warns first


def tensor_bytes(preps: list[Prepared]) -> int:
    """Approximate size of the run's tensors.safetensors (float32 logits; collected activations
    not counted): per-cell logits per `output.logits`, plus the baselines."""
    exp = preps[0].cfg.experiment
    if exp.output.logits == "none":
        return 0
    vocab = preps[0].lm.info.vocab_size
    total = 0
    for prep in preps:
        lengths = {p.index: p.length for p in prep.prompts}
        per_cell = [lengths[c.prompt] if exp.output.logits == "all" else 1 for c in prep.plan.cells]
        total += 4 * vocab * (sum(per_cell) + 3 * len(prep.prompts))
    return total


def human_size(n: float) -> str:
    """Bytes as B / KB / MB / GB."""
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KB", "MB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} GB"


def size_warning(preps: list[Prepared]) -> str | None:
    """A warning when `output.logits` would write (and merge in memory) a very large file."""
    size = tensor_bytes(preps)
    if size <= LARGE_TENSORS:
        return None
    logits = preps[0].cfg.experiment.output.logits
    return (
        f"output.logits: {logits} keeps full-vocabulary logits for every cell: tensors.safetensors "
        f"will be ~{human_size(size)}. Metrics need none of it; set `output.logits: none` unless you "
        "want the logits themselves."
    )


def _check_files(cfg: LoadedConfig) -> None:
    """Vector and bundle references must exist before anything runs (hf:// is checked on load)."""
    from ivx import checks

    problems = []
    for i, iv in enumerate(cfg.experiment.interventions):
        for field in ("vector", "bundle"):
            ref = getattr(iv, field)
            if isinstance(ref, str) and ref.startswith("hf://"):
                problems.extend(checks.hub_reference(cfg, ("interventions", i, field), ref))
            if not isinstance(ref, str) or ref.startswith("hf://") or ref.startswith("$"):
                continue
            path = Path(ref) if Path(ref).is_absolute() else cfg.path.parent / ref
            if not path.exists():
                problems.append(
                    cfg.problem(("interventions", i, field), f"{ref!r} not found (looked at {path})")
                )
            else:
                problems.extend(checks.reference(cfg, ("interventions", i, field), path))
    if problems:
        raise ConfigError(problems)


def select_correct(lm: Any, prompts: list) -> tuple[list, list[dict[str, Any]]]:
    """Keep prompts whose greedy next token is the target's first token; report the others."""
    import torch

    kept, dropped = [], []
    with torch.inference_mode():
        for p in prompts:
            logits = lm.model(input_ids=torch.tensor([p.base_ids], device=lm.device)).logits[0, -1]
            top = int(logits.argmax())
            if p.target_id is None:
                dropped.append({"prompt_index": p.index, "base": p.record.base, "reason": "no target"})
            elif top != p.target_id:
                predicted = lm.tokenizer.decode([top])
                dropped.append(
                    {
                        "prompt_index": p.index,
                        "base": p.record.base,
                        "target": p.record.target,
                        "predicted": predicted,
                        "reason": f"greedy prediction {predicted!r} is not the target",
                    }
                )
            else:
                kept.append(p)
    return kept, dropped


def _resolved(prep: Prepared) -> str:
    data = prep.cfg.experiment.model_dump(mode="json")
    data["prompts"] = [r.model_dump(exclude_none=True) for r in prep.cfg.records]
    data["model"]["layers"] = prep.lm.info.n_layers
    return yaml.safe_dump(data, sort_keys=False)


def run(
    path: str | Path,
    overrides: tuple[str, ...] = (),
    out_root: str | None = None,
    resume: Path | None = None,
    progress: bool = True,
    lm: Any = None,
    on_start: Callable[[Path], None] | None = None,
    max_cells: int | None = None,
    backend: str | None = None,
    address: str | None = None,
) -> Path:
    """Execute an experiment into a new (or resumed) run directory and return its path.

    One process at a time writes a run directory (rundir.Lock); resuming a complete run does
    nothing; `on_start` is called with the run directory once it exists. `backend` / `address`
    (local | ray, a Ray cluster) override the config's `backend` / `ray.address`.
    """
    with contextlib.ExitStack() as stack:
        if resume is not None:
            stack.enter_context(rundir.Lock(resume))
            if rundir.Manifest.read(resume).data["status"] == "complete":
                return resume
        hooks = (on_start or (lambda _: None), max_cells, (backend, address))
        return _run(path, overrides, out_root, resume, progress, lm, hooks, stack)


def _run(
    path: str | Path,
    overrides: tuple[str, ...],
    out_root: str | None,
    resume: Path | None,
    progress: bool,
    lm: Any,
    hooks: tuple[Callable[[Path], None], int | None, tuple[str | None, str | None]],
    stack: contextlib.ExitStack,
) -> Path:
    """The recipe: config → plan → run directory → baselines and cells per variant → outputs."""
    import torch

    from ivx import backends

    if resume is not None:
        path, overrides = _recorded_config(resume)
    on_start, max_cells, (backend, address) = hooks
    preps = prepare_all(path, overrides, lm, max_cells=max_cells)
    prep = preps[0]
    settings = backends.resolve(prep, path, overrides, backend, address)
    warning = size_warning(preps)
    if warning and progress:
        print(f"warning: {warning}", file=sys.stderr)
    torch.manual_seed(prep.cfg.experiment.seed)
    run_dir, manifest = _open_run_dir(prep, preps, path, overrides, out_root, resume, on_start, stack)
    clock = _Clock(manifest, resume is not None)
    executors: list[Executor] = []
    try:
        results, done = _results(run_dir, preps, resume is not None)
        with torch.inference_mode():
            _execute(preps, executors, done, settings, results, run_dir / "tensors.parts", progress)
            rows = results.rows()
            _write_outputs(run_dir, preps, executors, rows, results, *_axes_and_metrics(prep))
    except BaseException as exc:
        clock.fail(exc, executors)
        raise
    clock.finish(preps, executors, len(rows))
    return run_dir


def _axes_and_metrics(prep: Prepared) -> tuple[tuple[str, ...], list[str]]:
    """The results' grid axes (plus `corruption` for a list of corruptions) and scalar metric names."""
    axes = tuple(prep.plan.axes) + (("corruption",) if prep.label is not None else ())
    return axes, [m for m in prep.cfg.experiment.metrics if m != "top_k"]


def _results(run_dir: Path, preps: list[Prepared], resumed: bool) -> tuple[rundir.Results, set[int]]:
    """The plan files, the results table (repaired) and the cells already done (verified on resume)."""
    _write_plan(run_dir, preps)  # rewritten on resume: a kill or a full disk may have lost it
    results = rundir.Results(run_dir)
    results.repair()
    done = results.done_cells()
    if resumed:
        done = results.verified(done, run_dir / "tensors.parts", preps[0].cfg.experiment.output.logits)
    return results, done


def _execute(
    preps: list[Prepared],
    executors: list[Executor],
    done: set[int],
    settings: backends.Settings,
    results: rundir.Results,
    parts: Path,
    progress: bool,
) -> None:
    """Per variant: baselines, then the cells not yet done from the backend, stored batch by batch."""
    from ivx import answers, attribution, backends, pathpatch

    exp = preps[0].cfg.experiment
    label_rows = preps[0].label is not None
    todo_total = sum(1 for p in preps for c in p.plan.cells if c.index not in done)
    with _progress(progress, todo_total) as advance:
        for variant in preps:
            executor = answers.executor(variant.cfg, variant.lm, variant.prompts, variant.plan)
            executor.prepare()
            executors.append(executor)
            todo = [c for c in variant.plan.cells if c.index not in done]
            if exp.method == "attribution":
                batches = attribution.execute(executor, todo)
            elif pathpatch.applies(variant.cfg):
                batches = pathpatch.execute(executor, todo)
            else:
                batches = backends.execute(executor, todo, settings, variant)
            for n_batch, outputs in enumerate(batches):
                label = variant.label if label_rows else None
                _store(outputs, label, exp.output.logits, parts, n_batch, results)
                advance(len(outputs))


class _Clock:
    """Wall time and no-op cells across resumes, written into the manifest when the run ends."""

    def __init__(self, manifest: rundir.Manifest, resumed: bool) -> None:
        self.manifest = manifest
        self.started = time.perf_counter()
        self.spent = float(manifest.data.get("seconds") or 0.0)
        self.noop_before = int(manifest.data.get("cells_noop") or 0) if resumed else 0

    def seconds(self) -> float:
        """Seconds spent in this run directory, over every resume."""
        return self.spent + time.perf_counter() - self.started

    def fail(self, exc: BaseException, executors: list[Executor]) -> None:
        """Mark the run failed."""
        self.manifest.fail(exc, self.seconds(), self.noop_before + _noop(executors))

    def finish(self, preps: list[Prepared], executors: list[Executor], cells_done: int) -> None:
        """Mark the run complete, with what ran and how (the executors' shortcut reports)."""
        labelled = preps[0].label is not None
        self.manifest.finish(
            "complete",
            error=None,
            seconds=round(self.seconds(), 3),
            cells_done=cells_done,
            cells_noop=self.noop_before + _noop(executors),
            shortcuts=(
                {p.label: e.report for p, e in zip(preps, executors, strict=True)}
                if labelled
                else executors[0].report
            ),
        )


def _write_plan(run_dir: Path, preps: list[Prepared]) -> None:
    """resolved.yaml and plan.jsonl (deterministic: a resume rewrites the same bytes)."""
    labelled = preps[0].label is not None
    rundir.write_text(run_dir / "resolved.yaml", _resolved(preps[0]))
    plan_rows = [
        {**row, **({"corruption": p.label} if labelled else {})} for p in preps for row in p.plan.to_rows()
    ]
    rundir.write_text(run_dir / "plan.jsonl", "".join(json.dumps(r) + "\n" for r in plan_rows))


def _noop(executors: list[Executor]) -> int:
    return sum(e.noop_cells for e in executors)


def _recorded_config(resume: Path) -> tuple[Path, tuple[str, ...]]:
    """The config file and --set overrides a run was started with."""
    previous = rundir.Manifest.read(resume).data
    original = Path(previous.get("config") or "")
    # the original file (relative prompt files resolve next to it), else the run's copy
    path = original if original.is_file() else resume / "config.yaml"
    return path, tuple(previous.get("overrides", []))


def _open_run_dir(
    prep: Prepared,
    preps: list[Prepared],
    path: str | Path,
    overrides: tuple[str, ...],
    out_root: str | None,
    resume: Path | None,
    on_start: Callable[[Path], None],
    stack: contextlib.ExitStack,
) -> tuple[Path, rundir.Manifest]:
    """Check a resumed run's inputs and reopen it, or create a new run directory and manifest."""
    from ivx import fingerprint, models

    exp = prep.cfg.experiment
    labelled = prep.label is not None
    digest = hashlib.sha256(prep.cfg.text.encode()).hexdigest()
    inputs = fingerprint.inputs(prep.cfg, prep.lm)
    if resume is not None:
        previous = rundir.Manifest.read(resume).data
        fingerprint.check(prep.cfg, resume, previous.get("inputs"), inputs)
        if previous.get("config_sha256") not in (None, digest):
            raise ConfigError(
                [
                    prep.cfg.problem(
                        (),
                        f"this config changed since run {resume} started; resuming would mix "
                        "results of two experiments (start a new run instead)",
                    )
                ]
            )
        run_dir = resume
        on_start(run_dir)
        manifest = rundir.Manifest.read(run_dir)
        manifest.update(status="running", resumed=rundir._now(), error=None)
    else:
        run_dir = rundir.create(out_root or exp.output.root, exp.name)
        stack.enter_context(rundir.Lock(run_dir))
        on_start(run_dir)
        rundir.write_text(run_dir / "config.yaml", prep.cfg.text)
        manifest = rundir.Manifest.start(
            run_dir,
            name=exp.name,
            config=str(Path(path).resolve()),
            config_sha256=digest,
            overrides=list(overrides),
            model={
                "name": exp.model.name,
                "revision": prep.lm.revision,
                "path": prep.lm.path,
                "model_type": prep.lm.info.model_type,
                "d_model": prep.lm.info.d_model,
                "n_layers": prep.lm.info.n_layers,
            },
            device=models.placement(prep.lm),
            dtype=str(prep.lm.dtype).removeprefix("torch."),
            seed=exp.seed,
            cells=sum(len(p.plan.cells) for p in preps),
            prompts=len(prep.prompts),
            corruptions=[p.label for p in preps] if labelled else None,
            inputs=inputs,
        )
    return run_dir, manifest


def _store(
    outputs: list[Any], label: str | None, logits: str, parts: Path, n_batch: int, results: rundir.Results
) -> None:
    """Append one batch: its tensors as an atomic part file, then its rows (all or nothing)."""
    import torch

    tensors: dict[str, torch.Tensor] = {}
    for out in outputs:
        if label is not None:
            out.row["corruption"] = label
        if logits != "none" and out.logits is not None:
            tensors[f"cell{out.cell.index}"] = out.logits.contiguous()
        tensors.update({k: v.contiguous() for k, v in out.collected.items()})
    if tensors:
        parts.mkdir(exist_ok=True)
        stamp = f"{int(time.time() * 1000)}-{n_batch:06d}"
        rundir.save_tensors(tensors, parts / f"part-{stamp}.safetensors")
    results.append([o.row for o in outputs])


def _summary(
    preps: list[Prepared],
    executors: list[Any],
    rows: list[dict[str, Any]],
    axes: tuple[str, ...],
    metric_names: list[str],
) -> tuple[dict[str, Any], dict[str | None, dict[str, Any]]]:
    """summary.json's content (grid statistics, prompts, warnings, traces, attribution checks)."""
    from ivx import answers, tracing, verification

    prep = preps[0]
    exp = prep.cfg.experiment
    labelled = prep.label is not None
    summary: dict[str, Any] = {
        "name": exp.name,
        "metrics": metric_names,
        "axes": list(axes),
        "grid": summarize(rows, axes, metric_names),
        "prompts": _prompt_table(executors[0]),
    }
    if prep.dropped:
        summary["dropped"] = prep.dropped
    warnings = answers.scoring_warnings(prep.prompts, exp.answer)
    warnings += _contrast_warnings(summary["prompts"], metric_names)
    if warnings:
        summary["warnings"] = warnings
    traces = {}
    for variant, executor in zip(preps, executors, strict=True):
        mine = [r for r in rows if r.get("corruption") == variant.label] if labelled else rows
        if executor.base.sigma is not None:
            key = f"noise_std_{variant.label}" if labelled else "noise_std"
            summary[key] = variant.cfg.experiment.corrupt.scale * executor.base.sigma  # type: ignore[union-attr]
        if tracing.applies(variant):
            traces[variant.label] = tracing.aggregate(variant, mine, executor)
    if traces:
        summary["trace"] = next(iter(traces.values()))
        if labelled:
            summary["traces"] = traces
    if exp.method == "attribution":
        checks = verification.for_run(executors, [p.label for p in preps], rows)
        if checks:
            summary["attribution_verification"] = checks
    return summary, traces


def _write_outputs(
    run_dir: Path,
    preps: list[Prepared],
    executors: list[Any],
    rows: list[dict[str, Any]],
    results: rundir.Results,
    axes: tuple[str, ...],
    metric_names: list[str],
) -> None:
    """Everything after the cells: summary.json, results.csv, the merged tensors, the figures."""
    from ivx import gridplot, plots

    exp = preps[0].cfg.experiment
    labelled = preps[0].label is not None
    parts = run_dir / "tensors.parts"
    summary, traces = _summary(preps, executors, rows, axes, metric_names)
    if exp.controls:
        from ivx import controls

        summary["controls"], extra = controls.section(run_dir, preps, rows, axes, metric_names)
        summary["warnings"] = summary.get("warnings", []) + extra
    rundir.write_json(run_dir / "summary.json", summary)
    results.write_csv(rows)
    _merge_tensors(run_dir, parts, [e.base for e in executors], [p.label for p in preps], exp.output.logits)
    if exp.output.plots:
        for variant in preps:
            mine = [r for r in rows if r.get("corruption") == variant.label] if labelled else rows
            trace = traces.get(variant.label)
            suffix = f"_{variant.label}" if labelled else ""
            plots.write_all(run_dir, variant, mine, {"trace": trace} if trace else {}, suffix)
        gridplot.write(run_dir, summary)


def _prompt_table(executor: Any) -> list[dict[str, Any]]:
    out = []
    for p in executor.prompts.values():
        corrupted, clean = executor.reference_values(p.index)
        out.append(
            {
                "prompt_index": p.index,
                "base": p.record.base,
                "tokens": list(p.base_tokens),
                "subject_span": list(p.subject_span) if p.subject_span else None,
                "bos": p.bos,
                "target_ids": list(p.target_ids) if p.target_ids else None,
                "target_tokens": list(p.target_tokens) if p.target_tokens else None,
                "foil_ids": list(p.foil_ids) if p.foil_ids else None,
                "foil_tokens": list(p.foil_tokens) if p.foil_tokens else None,
                "clean": clean,
                "corrupted": corrupted,
            }
        )
    return out


def _merge_tensors(
    run_dir: Path, parts: Path, bases: list[Any], labels: list[str | None], logits: str
) -> None:
    import shutil

    import torch
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    if logits != "none":
        for base, label in zip(bases, labels, strict=True):
            tag = f"{label}." if label else ""
            for p, v in base.clean_logits.items():
                tensors[f"clean.prompt{p}"] = v.contiguous()
            for p, v in base.corrupt_logits.items():
                tensors[f"{tag}corrupted.prompt{p}"] = v.contiguous()
            for p, v in base.source_logits.items():
                tensors[f"source.prompt{p}"] = v.contiguous()
    merged = run_dir / "tensors.safetensors"
    if merged.exists():  # a resume after an interrupted merge: keep every cell merged before
        tensors = {**load_file(str(merged)), **tensors}
    if parts.exists():
        for part in sorted(parts.glob("part-*.safetensors")):
            tensors.update(load_file(str(part)))
    if tensors:
        rundir.save_tensors(tensors, merged)
    if parts.exists():
        shutil.rmtree(parts)


class _progress:
    """A rich progress bar with cells/s (or nothing when disabled)."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled = enabled
        self.total = total

    def __enter__(self) -> Any:
        if not self.enabled:
            return lambda n: None
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("[bold]cells"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self.bar.__enter__()
        self.task = self.bar.add_task("cells", total=self.total, rate="")
        self.t0 = time.perf_counter()
        self.count = 0

        def advance(n: int) -> None:
            self.count += n
            rate = self.count / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.update(self.task, advance=n, rate=f"{rate:,.1f} cells/s")

        return advance

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)
