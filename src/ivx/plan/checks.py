"""Model-aware limits checked before anything runs: prompt lengths, plan size, referenced files.

Everything `ivx run` would reject here is rejected by `ivx validate` too, in the same
`file:line  dotted.path  message` form.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ivx.config import sweep as sweeps
from ivx.config.loader import LoadedConfig
from ivx.config.schema import Experiment
from ivx.core.errors import ConfigError, Problem
from ivx.model import components
from ivx.plan import grid as plan
from ivx.plan import module_checks, tokenization
from ivx.store import bundle, hub, vectors

POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length")


def max_positions(lm: Any) -> int | None:
    """The longest sequence the model's position embeddings cover, when its config says."""
    config = getattr(lm.model, "config", None)
    for key in POSITION_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def model_limits(cfg: LoadedConfig, lm: Any, prompts: list, max_cells: int | None) -> None:
    """Prompts must fit the model's positions; the plan must stay under `max_cells` cells."""

    problems: list[Problem] = []
    limit = max_positions(lm)
    for p in prompts if limit is not None else []:
        for run, ids in (("base", p.base_ids), ("source", p.source_ids)):
            if ids is not None and limit is not None and len(ids) > limit:
                problems.append(
                    cfg.problem(
                        ("prompts",),
                        f"prompt {p.index} {run} is {len(ids)} tokens; {lm.name} takes at most {limit} "
                        "positions (max_position_embeddings): shorten it",
                    )
                )
    problems.extend(bundle_shapes(cfg, lm.info))
    problems.extend(vector_shapes(cfg, lm))
    problems.extend(module_checks.problems(cfg, lm))
    if problems:
        raise ConfigError(problems[:20])
    if max_cells is None:
        return
    variants = len(cfg.experiment.corrupt) if isinstance(cfg.experiment.corrupt, list) else 1
    cells = plan.count(cfg, lm.info, prompts) * variants
    if cells > max_cells:
        raise ConfigError(
            [
                cfg.problem(
                    ("sweep",),
                    f"the plan has {cells:,} cells (prompts × sweep grid), above --max-cells {max_cells:,}; "
                    "its cells alone take ~1.2 KB each before any runs: narrow the sweep or use fewer "
                    "prompts, or pass --force / a larger --max-cells",
                )
            ]
        )


def reference(cfg: LoadedConfig, loc: tuple, path: Path) -> list[Problem]:
    """A referenced bundle or vector file must be intact (hashes, format) before anything runs."""
    import pickle

    try:
        if (path / bundle.MANIFEST).is_file() or loc[-1] == "bundle":
            bundle.verify(path)
        else:
            iv = cfg.experiment.interventions[loc[1]]
            vectors.load_vector(str(path.resolve()), iv.name or f"iv{loc[1]}", cfg.path.parent)
    except (bundle.BundleError, vectors.VectorError, pickle.UnpicklingError) as exc:
        return [cfg.problem(loc, " ".join(str(exc).split()))]
    return []


def hub_reference(cfg: LoadedConfig, loc: tuple, ref: str) -> list[Problem]:
    """An `hf://user/name[@revision]` reference must at least be well formed."""

    try:
        hub.parse_ref(ref)
    except hub.HubError as exc:
        return [cfg.problem(loc, str(exc))]
    return []


def replacement(cfg: LoadedConfig, tokenizer: Any, prompts: list[Any]) -> list[Problem]:
    """A `replace` corruption must find, for every prompt, another subject that keeps its length
    (what the run computes first): checked with the tokenizer alone, before any cell runs."""

    corrupt = cfg.experiment.corrupt
    singles = corrupt if isinstance(corrupt, list) else [corrupt] if corrupt else []
    problems: list[Problem] = []
    for i, single in enumerate(singles):
        if single.kind != "replace":
            continue
        loc: tuple = ("corrupt", i, "kind") if isinstance(corrupt, list) else ("corrupt", "kind")
        try:
            tokenization.replacements(tokenizer, prompts, cfg.experiment.seed)
        except tokenization.TokenizationError as exc:
            problems += [cfg.problem(loc, f"prompt {p}: {message}") for p, _, message in exc.problems]
    return problems


def bundle_shapes(cfg: LoadedConfig, info: Any) -> list[Problem]:
    """A local trained `bundle` must have been made for a model of this width and depth (what the
    run checks when it loads the parameters), reported before anything runs."""

    problems: list[Problem] = []
    expect = {"d_model": info.d_model, "n_layers": info.n_layers}
    for i, iv in enumerate(cfg.experiment.interventions):
        ref = iv.bundle
        if ref is None or ref.startswith(("hf://", "$")):
            continue
        path = Path(ref) if Path(ref).is_absolute() else cfg.path.parent / ref
        if not (path / bundle.MANIFEST).is_file():
            continue  # a missing or broken bundle is reported by `reference`
        try:
            _, manifest, _ = bundle.verify(path)
        except bundle.BundleError:
            continue
        base = manifest.base_model.model_dump()
        for key, value in expect.items():
            if base.get(key) != value:
                problems.append(
                    cfg.problem(
                        ("interventions", i, "bundle"),
                        f"bundle {ref!r} was made for {base.get('name')} ({key} {base.get(key)}), but "
                        f"this experiment's model has {key} {value}",
                    )
                )
                break
    return problems


def vector_shapes(cfg: LoadedConfig, lm: Any) -> list[Problem]:
    """A steering `vector` must be as wide as the component it is written to (checked on the
    model's structure; the run would fail on it after computing its baselines)."""

    problems: list[Problem] = []
    for i, iv in enumerate(cfg.experiment.interventions):
        if not isinstance(iv.vector, str) or iv.vector.startswith(("hf://", "$")):
            continue
        if not isinstance(iv.component, str) or iv.component.startswith("$"):
            continue
        layer = iv.layer if isinstance(iv.layer, int) else 0  # a component's width is the same at every layer
        try:
            vec = vectors.load_vector(iv.vector, iv.name or f"iv{i}", cfg.path.parent)
            site = components.resolve(lm.model, lm.info, iv.component, layer % lm.info.n_layers)
        except Exception:  # noqa: BLE001 - unreadable files and unknown sites are reported elsewhere
            continue
        if vec.dim() == 1 and vec.shape[0] != site.dim:
            problems.append(
                cfg.problem(
                    ("interventions", i, "vector"),
                    f"vector {iv.vector!r} has {vec.shape[0]} dims but {iv.component} has {site.dim}",
                )
            )
    return problems


# Sections and fields that only some commands read. A field a command would silently ignore is
# a problem of that command's validation, saying why; a field it honours is never one.
COMMAND_SECTIONS: tuple[plan.Mode, ...] = ("generate", "train")  # each is read by its own command only
COMMAND_CONTROLS: dict[str, tuple[str, ...]] = {
    "run": ("random_init", "placebo"),
    "generate": (),
    # train always reports the placebo (an untrained random basis) as control_iia; listing it adds
    # the controls report (controls.txt, plots/iia_controls.png, warnings)
    "train": ("shuffled_labels", "random_init", "placebo"),
}


def ignored(cfg: LoadedConfig, command: plan.Mode) -> list[Problem]:
    """Every field and control `ivx <command>` would silently ignore, each located and explained.

    `ivx generate` accepts a run config's scoring and output settings (`metrics`, `answer`,
    `output`): it writes no scores, tensors or plots, so nothing that looks computed is missing,
    and a run config generates per grid point as it is.
    """

    exp = cfg.experiment
    found: list[tuple[tuple, str]] = []
    for owner in COMMAND_SECTIONS:
        if getattr(exp, owner) is not None and command != owner:
            found.append(
                (
                    (owner,),
                    f"`{owner}:` holds the settings of `ivx {owner}`; `ivx {command}` does not read it: "
                    f"remove it (check the config for {owner} with `ivx validate --for {owner}`)",
                )
            )
    found += _controls(exp, command)
    if command == "run":
        found += _run_unused(exp)
    else:
        found += _run_only(exp, command)
    if command == "train":
        found += _train_unused(exp)
    problems = [cfg.problem(loc, message) for loc, message in found]
    return sorted(problems, key=lambda p: p.line or 0)  # in file order


def _controls(exp: Experiment, command: plan.Mode) -> list[tuple[tuple, str]]:
    allowed = COMMAND_CONTROLS[command]
    runs = f"runs {' and '.join(allowed)}" if allowed else "runs no controls"
    found = []
    for i, name in enumerate(exp.controls):
        if name not in allowed:
            owners = [c for c, names in COMMAND_CONTROLS.items() if name in names and c != command]
            found.append(
                (
                    ("controls", i),
                    f"controls: {name} applies to {' and '.join(f'`ivx {c}`' for c in owners)} only; "
                    f"`ivx {command}` {runs}",
                )
            )
    return found


def _run_unused(exp: Experiment) -> list[tuple[tuple, str]]:
    """Fields `ivx run` reads only together with another setting, or not at all."""
    found: list[tuple[tuple, str]] = []
    if "attribution" in exp.model_fields_set and exp.method != "attribution":
        found.append(
            (
                ("attribution",),
                f"`attribution:` configures method: attribution; this run uses method: {exp.method} "
                "(set method: attribution, or remove it)",
            )
        )
    if "top_k" in exp.output.model_fields_set and "top_k" not in exp.metrics:
        found.append(
            (
                ("output", "top_k"),
                "output.top_k is how many tokens the top_k metric lists; metrics has no top_k",
            )
        )
    return found


def _run_only(exp: Experiment, command: plan.Mode) -> list[tuple[tuple, str]]:
    """Settings of `ivx run`'s methods and backends, set in a generate or train config."""
    where = "runs in this process"
    found: list[tuple[tuple, str]] = []
    if exp.method != "exact":
        found.append(
            (
                ("method",),
                f"method: {exp.method} is `ivx run`'s; `ivx {command}` applies its interventions exactly",
            )
        )
    if "attribution" in exp.model_fields_set:
        found.append(
            (
                ("attribution",),
                f"`attribution:` configures `ivx run`'s method: attribution; "
                f"`ivx {command}` does not read it",
            )
        )
    if exp.backend != "local":
        found.append(
            (("backend",), f"backend: {exp.backend} distributes `ivx run`'s cells; `ivx {command}` {where}")
        )
    if "ray" in exp.model_fields_set:
        found.append((("ray",), f"`ray:` configures `ivx run`'s Ray backend; `ivx {command}` {where}"))
    if "batch" in exp.model_fields_set:
        batches = "train.batch_size" if command == "train" else "one batch per grid point"
        found.append(
            (("batch",), f"`batch:` sizes `ivx run`'s forward passes; `ivx {command}` uses {batches}")
        )
    if exp.readout is not None:
        found.append(
            (("readout",), f"readout: {exp.readout} reads out `ivx run`'s cells; `ivx {command}` does not")
        )
    if exp.trace is not None and command == "train":  # its window widens vanilla restorations only
        found.append(
            (("trace",), "`trace:` is `ivx run`'s causal-tracing analysis; `ivx train` does not read it")
        )
    elif exp.trace is not None:  # `ivx generate` reads trace.window (vanilla restorations)
        for field in ("select_correct", "plots_per_fact"):
            if field in exp.trace.model_fields_set:
                message = f"trace.{field} is part of `ivx run`'s causal-tracing analysis; `ivx {command}` "
                found.append((("trace", field), message + "does not read it"))
    for i, iv in enumerate(exp.interventions):
        if iv.receivers:
            found.append(
                (
                    ("interventions", i, "receivers"),
                    f"path patching (`receivers`) is `ivx run`'s; "
                    f"`ivx {command}` would patch the sender's whole output: remove them",
                )
            )
    return found


def _train_unused(exp: Experiment) -> list[tuple[tuple, str]]:
    """Fields a training config sets that `ivx train` never reads."""
    found: list[tuple[tuple, str]] = []
    iia = "`ivx train` scores interchange intervention accuracy (IIA) on the first target token"
    if "metrics" in exp.model_fields_set:
        found.append((("metrics",), f"metrics are `ivx run`'s scores; {iia}"))
    if exp.answer != "first_token":
        found.append((("answer",), f"answer: {exp.answer} is how `ivx run` scores targets; {iia}"))
    output = exp.output
    if "logits" in output.model_fields_set and output.logits != "none":
        found.append((("output", "logits"), "`ivx train` writes trained parameters, no logits"))
    if "top_k" in output.model_fields_set:
        found.append(
            (("output", "top_k"), "output.top_k is for `ivx run`'s top_k metric; `ivx train` has none")
        )
    if not output.plots:
        found.append((("output", "plots"), "`ivx train` always writes its plots (training.png, iia.png)"))
    for i, iv in enumerate(exp.interventions):
        if iv.bundle is not None:
            found.append(
                (
                    ("interventions", i, "bundle"),
                    "`ivx train` trains the parameters from a fresh "
                    "initialisation; `bundle` is what `ivx run` and `ivx generate` load: remove it",
                )
            )
    if exp.train is not None and exp.train.data != "records":
        found.append(
            (
                ("train", "data"),
                f"train.data: {exp.train.data} is not implemented; `ivx train` "
                "trains on the prompts' records (`ivx toy export` writes a city_swap.jsonl)",
            )
        )
    return found


def subspace_widths(cfg: LoadedConfig, lm: Any, cells: tuple[plan.Cell, ...]) -> list[Problem]:
    """`ivx train`: the learned subspace must fit the site, k ≤ the component's width, at every point."""

    problems = []
    firsts: dict[tuple, plan.Cell] = {}
    for cell in cells:
        firsts.setdefault(cell.point, cell)  # one cell per grid point: the width is the same for all
    for cell in firsts.values():
        edit = cell.edits[0]
        iv = plan.substitute(cfg.experiment.interventions[0], dict(cell.point))
        k = iv.low_rank_dimension or iv.interchange_dim or 1
        width = components.resolve(lm.model, lm.info, edit.component, edit.layer).dim
        if k > width:
            field = "low_rank_dimension" if iv.low_rank_dimension else "interchange_dim"
            raw = getattr(cfg.experiment.interventions[0], field)
            sweep = cfg.experiment.sweep
            path = (
                sweeps.value_path(sweep, raw[1:], 0)[:-1]
                if isinstance(raw, str)
                else ("interventions", 0, field)
            )
            problems.append(cfg.problem(path, f"{field} {k} exceeds the width of {edit.component} ({width})"))
    return list(dict.fromkeys(problems))


def training_records(cfg: LoadedConfig, n: int) -> list[Problem]:
    """`ivx train` holds out `eval_split` of the records (at least one): one must be left to train on."""

    if n >= 2:
        return []
    return [
        cfg.problem(
            ("prompts",),
            f"{n} record: `ivx train` holds out at least one for IIA (train.eval_split) and "
            "needs another to train on: give at least 2 records",
        )
    ]
