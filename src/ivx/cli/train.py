"""`ivx train`: train DAS interventions (IIT) from a YAML file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ivx.cli.errors import guard
from ivx.cli.options import DEFAULT_MAX_CELLS, ForceOpt, MaxCellsOpt, cap
from ivx.recipes.train import train_run
from ivx.results import train_report


def register(app: typer.Typer) -> None:
    """Add the `train` command."""

    @app.command("train")
    @guard
    def train_command(
        config: Annotated[
            Path | None, typer.Argument(help="Experiment YAML with one trainable intervention.")
        ] = None,
        set_: Annotated[list[str] | None, typer.Option("--set", help="Override a config field.")] = None,
        out: Annotated[Path | None, typer.Option("--out", help="Root directory for the run.")] = None,
        resume: Annotated[
            Path | None, typer.Option("--resume", help="Continue an interrupted training run.")
        ] = None,
        max_cells: MaxCellsOpt = DEFAULT_MAX_CELLS,
        force: ForceOpt = False,
    ) -> None:
        """Train a DAS intervention (IIT); writes metrics, plots and an intervention bundle."""

        if config is None and resume is None:
            typer.echo("error: give CONFIG or --resume RUN_DIR", err=True)
            raise typer.Exit(2)

        def log(message: str) -> None:
            typer.echo(message, err=True)

        where = str(out) if out else None
        run_dir = train_run(config or Path(), tuple(set_ or ()), where, resume, log, cap(max_cells, force))

        summary = json.loads((run_dir / "summary.json").read_text())
        typer.echo(train_report.iia_table(summary), err=True)
        if (run_dir / "controls.txt").is_file():
            typer.echo((run_dir / "controls.txt").read_text().rstrip(), err=True)
        for warning in summary.get("warnings", []):
            typer.echo(f"warning: {warning}", err=True)
        typer.echo(str(run_dir))
