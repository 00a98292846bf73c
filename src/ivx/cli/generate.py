"""`ivx generate`: text with and without an intervention, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ivx.cli.errors import guard
from ivx.cli.options import DEFAULT_MAX_CELLS, ForceOpt, MaxCellsOpt, cap
from ivx.recipes.generate import generate_run


def register(app: typer.Typer) -> None:
    """Add the `generate` command."""

    @app.command("generate")
    @guard
    def generate_command(
        config: Annotated[
            Path | None, typer.Argument(help="Experiment YAML with a `generate:` section.")
        ] = None,
        model: Annotated[str | None, typer.Option(help="Quick mode: model (hub id, dir, ivx-toy).")] = None,
        prompt: Annotated[list[str] | None, typer.Option(help="Quick mode: prompt (repeatable).")] = None,
        intervention: Annotated[
            Path | None, typer.Option(help="Quick mode: YAML with intervention(s).")
        ] = None,
        max_new_tokens: Annotated[int, typer.Option(help="Quick mode: tokens to generate.")] = 20,
        set_: Annotated[list[str] | None, typer.Option("--set", help="Override a config field.")] = None,
        out: Annotated[Path | None, typer.Option("--out", help="Root directory for the run.")] = None,
        max_cells: MaxCellsOpt = DEFAULT_MAX_CELLS,
        force: ForceOpt = False,
    ) -> None:
        """Generate text with and without the intervention; print both side by side."""

        quick = None
        if config is None:
            if not model or not prompt:
                typer.echo("error: give CONFIG, or --model and --prompt (and --intervention)", err=True)
                raise typer.Exit(2)
            quick = {
                "model": model,
                "prompts": prompt,
                "intervention": intervention,
                "max_new_tokens": max_new_tokens,
            }
        where = str(out) if out else None
        run_dir = generate_run(config, tuple(set_ or ()), where, quick, typer.echo, cap(max_cells, force))
        typer.echo(str(run_dir))
