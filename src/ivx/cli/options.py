"""Options several commands share: `--set`, and the plan-size cap `--max-cells` / `--force`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DEFAULT_MAX_CELLS = 2_000_000
MaxCellsOpt = Annotated[
    int,
    typer.Option(
        "--max-cells", min=1, help="Refuse plans with more cells than this (their plan alone fills memory)."
    ),
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Accept a plan above --max-cells.")]
ConfigArg = Annotated[Path, typer.Argument(help="Experiment YAML file.", show_default=False)]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config field, e.g. --set seed=3 --set corrupt.samples=2."),
]


def cap(max_cells: int, force: bool) -> int | None:
    """The cell cap `prepare` applies: none with --force."""
    return None if force else max_cells
