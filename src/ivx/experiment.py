"""The `ivx run` recipe, top to bottom: config → model → plan → execute → run directory."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ivx import config as config_mod
from ivx import estimate, outputs, rundir, session
from ivx.config import ConfigError, LoadedConfig
from ivx.plan import Mode, Plan
from ivx.progressbar import ProgressBar

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
    problems = checks.replacement(cfg, lm.tokenizer, prompts)
    if problems:
        raise ConfigError(problems)  # before the run directory and any cell
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
        path, overrides = session.recorded_config(resume)
    on_start, max_cells, (backend, address) = hooks
    preps = prepare_all(path, overrides, lm, max_cells=max_cells)
    prep = preps[0]
    settings = backends.resolve(prep, path, overrides, backend, address)
    warning = estimate.size_warning(preps)
    if warning and progress:
        print(f"warning: {warning}", file=sys.stderr)
    torch.manual_seed(prep.cfg.experiment.seed)
    run_dir, manifest = session.open_dir(preps, path, overrides, out_root, resume, on_start, stack)
    clock = session.Clock(manifest, resume is not None)
    executors: list[Executor] = []
    try:
        results, done = session.results(run_dir, preps, resume is not None)
        with torch.inference_mode():
            _execute(preps, executors, done, settings, results, run_dir / "tensors.parts", progress)
            rows = results.rows()
            outputs.write(run_dir, preps, executors, rows, results, *outputs.axes_and_metrics(prep))
    except BaseException as exc:
        clock.fail(exc, executors)
        raise
    clock.finish(preps, executors, len(rows))
    return run_dir


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
    with ProgressBar(progress, todo_total) as advance:
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
            for n_batch, batch in enumerate(batches):
                label = variant.label if label_rows else None
                outputs.store(batch, label, exp.output.logits, parts, n_batch, results)
                advance(len(batch))
