"""The method table: how a run turns cells into rows. Adding a method is one module and one row.

Every method has the same small protocol: `applies(cfg)` (does this experiment use it),
`check(cfg)` (config problems, reported with the schema's), `check_model(cfg, lm)` (model-aware
problems, ConfigError before any forward pass), `execute(executor, cells)` (batches of
`CellOutput`s after `executor.prepare()`, rows from the one row builder, `engine.rows`),
`tasks(executor, cells, size)` (the cells cut into backend tasks that reproduce the local run's
forwards) and `summary(executors, labels, rows)` (what the method adds to summary.json). A row also
says which backends and corruption kinds it runs with; `config_checks` rejects the others with
the reason, so no combination is silently ignored. The first row that applies is the run's
method; `exact` applies to everything else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ivx.config.loader import LoadedConfig
from ivx.core.errors import Problem
from ivx.engine import loop
from ivx.methods import attribution, pathpatch, readouts, sae_attribution_summary, verification

if TYPE_CHECKING:
    from ivx.engine.executor import Executor
    from ivx.engine.loop import CellOutput
    from ivx.plan.grid import Cell

BACKENDS: tuple[str, ...] = ("local", "ray")
CORRUPTIONS: tuple[str, ...] = ("none", "noise", "replace")
Rows = list[dict[str, Any]]


@dataclass(frozen=True)
class Method:
    """One way of computing a run's cells, and what it supports."""

    name: str
    applies: Callable[[LoadedConfig], bool]
    check: Callable[[LoadedConfig], list[Problem]]
    check_model: Callable[[LoadedConfig, Any], None]
    execute: Callable[[Executor, list[Cell]], Iterator[list[CellOutput]]]
    tasks: Callable[[Executor, list[Cell], int], list[list[Cell]]]
    summary: Callable[[list[Executor], list[str | None], Rows], dict[str, Any]]
    backends: tuple[str, ...] = BACKENDS
    corruptions: tuple[str, ...] = CORRUPTIONS


def _exact_execute(executor: Executor, cells: list[Cell]) -> Iterator[list[CellOutput]]:
    """Exact activation patching: the executor's batched forwards with every exact shortcut."""
    return executor.execute(cells)


def by_steps(executor: Executor, cells: list[Cell], size: int) -> list[list[Cell]]:
    """Tasks of about `size` cells cut from the exact loop's own batches (`Executor.steps`, counted
    in its report as the local loop would) where no deferred-head rows are pending
    (`loop.segments`): any run of consecutive segments re-chunks as the local loop did."""
    out: list[list[Cell]] = []
    for segment in loop.segments(executor.steps(cells), executor.samples):
        if out and len(out[-1]) < size:
            out[-1] = out[-1] + segment
        else:
            out.append(list(segment))
    return out


def by_prompts(executor: Executor, cells: list[Cell], size: int) -> list[list[Cell]]:
    """Tasks of whole prompts (at least `size` cells each) for methods that run prompt by prompt."""
    per_prompt: dict[int, list[Cell]] = {}
    for cell in cells:
        per_prompt.setdefault(cell.prompt, []).append(cell)
    out: list[list[Cell]] = []
    for mine in per_prompt.values():
        if out and len(out[-1]) < size:
            out[-1] = out[-1] + mine
        else:
            out.append(list(mine))
    return out


def _no_problems(cfg: LoadedConfig) -> list[Problem]:
    return []


def _no_model_problems(cfg: LoadedConfig, lm: Any) -> None:
    return None


def _no_summary(executors: list[Executor], labels: list[str | None], rows: Rows) -> dict[str, Any]:
    return {}


def _verification(executors: list[Executor], labels: list[str | None], rows: Rows) -> dict[str, Any]:
    """Attribution's check against exact patching (`attribution.verify`), if configured, and the
    error nodes and top features of SAE sites (`sae_attribution_summary`)."""
    checks = verification.for_run(executors, labels, rows)
    out = {"attribution_verification": checks} if checks else {}
    return {**out, **sae_attribution_summary.summary(executors, labels, rows)}


METHODS: tuple[Method, ...] = (
    Method(
        "readout",
        readouts.applies,
        readouts.check,
        readouts.check_model,
        readouts.execute,
        by_prompts,
        readouts.summary,
        backends=("local",),
    ),
    Method(
        "attribution",
        lambda cfg: cfg.experiment.method == "attribution",
        attribution.check,
        attribution.check_model,
        attribution.execute,
        by_prompts,
        _verification,
    ),
    Method(
        "path_patching",
        pathpatch.applies,
        pathpatch.check,
        pathpatch.check_model,
        pathpatch.execute,
        by_prompts,
        _no_summary,
    ),
    Method(
        "exact", lambda cfg: True, _no_problems, _no_model_problems, _exact_execute, by_steps, _no_summary
    ),
)


def of(cfg: LoadedConfig) -> Method:
    """The method an experiment runs with (the first row that applies)."""
    return next(m for m in METHODS if m.applies(cfg))


def _kinds(cfg: LoadedConfig) -> list[str]:
    """The corruption kinds of an experiment (`none` without one; a list gives each)."""
    corrupt = cfg.experiment.corrupt
    items = corrupt if isinstance(corrupt, list) else [corrupt]
    return ["none" if c is None else c.kind for c in items]


def backend_problems(cfg: LoadedConfig, backend: str | None = None) -> list[Problem]:
    """The backend (the config's, or `backend` from the command line) if the method cannot use it."""
    method, backend = of(cfg), backend or cfg.experiment.backend
    if backend not in BACKENDS or backend in method.backends:
        return []
    where = ("backend",) if cfg.experiment.method == "exact" else ("method",)
    return [cfg.problem(where, f"{method.name} runs on {', '.join(method.backends)} only, not {backend}")]


def corruption_problems(cfg: LoadedConfig) -> list[Problem]:
    """Each corruption kind the method does not run with, with the kinds it does."""
    method = of(cfg)
    allowed = ", ".join(method.corruptions)
    return [
        cfg.problem(("corrupt",), f"{method.name} runs with corrupt: {allowed} only, not {kind}")
        for kind in dict.fromkeys(_kinds(cfg))
        if kind not in method.corruptions
    ]


def config_checks(cfg: LoadedConfig) -> list[Problem]:
    """Config problems of every method that applies and of the combinations the method does not
    support (run with the schema's, all at once)."""
    problems = [p for m in METHODS if m.applies(cfg) for p in m.check(cfg)]
    return problems + backend_problems(cfg) + corruption_problems(cfg)


def check_model(cfg: LoadedConfig, lm: Any) -> None:
    """Model-aware problems of the experiment's method: ConfigError before any forward pass."""
    for m in METHODS:
        if m.applies(cfg):
            m.check_model(cfg, lm)


def execute(executor: Executor, cells: list[Cell]) -> Iterator[list[CellOutput]]:
    """The batches of the experiment's own method (after `executor.prepare()`)."""
    return of(executor.cfg).execute(executor, cells)


def tasks(executor: Executor, cells: list[Cell], size: int) -> list[list[Cell]]:
    """`cells` cut into backend tasks of about `size` cells, as the experiment's method runs them."""
    return of(executor.cfg).tasks(executor, cells, size)


def summary(executors: list[Executor], labels: list[str | None], rows: Rows) -> dict[str, Any]:
    """What the experiment's method adds to summary.json (e.g. attribution's verification)."""
    return of(executors[0].cfg).summary(executors, labels, rows)
