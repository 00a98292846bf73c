"""The method table: how a run turns cells into rows. Adding a method is one module and one row.

Every method has the same small protocol: `applies(cfg)` (does this experiment use it),
`check(cfg)` (config problems, reported with the schema's), `check_model(cfg, lm)` (model-aware
problems, ConfigError before any forward pass) and `execute(executor, cells)` (batches of
`CellOutput`s after `executor.prepare()`, rows built by the executor's one row builder). The first
row that applies is the run's method; `exact` applies to everything else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ivx.config.loader import LoadedConfig
from ivx.core.errors import Problem
from ivx.methods import attribution, pathpatch

if TYPE_CHECKING:
    from ivx.engine.executor import Executor
    from ivx.engine.loop import CellOutput
    from ivx.plan.grid import Cell


@dataclass(frozen=True)
class Method:
    """One way of computing a run's cells."""

    name: str
    applies: Callable[[LoadedConfig], bool]
    check: Callable[[LoadedConfig], list[Problem]]
    check_model: Callable[[LoadedConfig, Any], None]
    execute: Callable[[Executor, list[Cell]], Iterator[list[CellOutput]]]


def _exact_execute(executor: Executor, cells: list[Cell]) -> Iterator[list[CellOutput]]:
    """Exact activation patching: the executor's batched forwards with every exact shortcut."""
    return executor.execute(cells)


def _no_problems(cfg: LoadedConfig) -> list[Problem]:
    return []


def _no_model_problems(cfg: LoadedConfig, lm: Any) -> None:
    return None


METHODS: tuple[Method, ...] = (
    Method(
        "attribution",
        lambda cfg: cfg.experiment.method == "attribution",
        attribution.check,
        attribution.check_model,
        attribution.execute,
    ),
    Method("path_patching", pathpatch.applies, pathpatch.check, pathpatch.check_model, pathpatch.execute),
    Method("exact", lambda cfg: True, _no_problems, _no_model_problems, _exact_execute),
)


def of(cfg: LoadedConfig) -> Method:
    """The method an experiment runs with (the first row that applies)."""
    return next(m for m in METHODS if m.applies(cfg))


def config_checks(cfg: LoadedConfig) -> list[Problem]:
    """Config problems of every method that applies (run with the schema's, all at once)."""
    return [p for m in METHODS if m.applies(cfg) for p in m.check(cfg)]


def check_model(cfg: LoadedConfig, lm: Any) -> None:
    """Model-aware problems of the experiment's method: ConfigError before any forward pass."""
    for m in METHODS:
        if m.applies(cfg):
            m.check_model(cfg, lm)


def execute(executor: Executor, cells: list[Cell]) -> Iterator[list[CellOutput]]:
    """The batches of the experiment's own method (after `executor.prepare()`)."""
    return of(executor.cfg).execute(executor, cells)
