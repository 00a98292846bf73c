"""`ivx ls`, `ivx show`, `ivx compare`: run directories as a collection."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer


def register(app: typer.Typer) -> None:
    """Add `ls`, `show` and `compare`."""

    @app.command("ls")
    def ls_command(
        runs_dir: Annotated[Path, typer.Argument(help="Directory holding run directories.")] = Path("runs"),
    ) -> None:
        """List the runs in RUNS_DIR: name, status, cells, wall time, created."""
        from ivx.results import tables as report
        from ivx.results.runs import listing

        rows = listing(runs_dir)
        if not rows:
            typer.echo(f"no runs in {runs_dir}", err=True)
            return
        header = list(rows[0])
        typer.echo(report.wrap(header, [[str(r[h]) for h in header] for r in rows], width=10_000))

    @app.command("show")
    def show_command(run: Annotated[Path, typer.Argument(help="A run directory.")]) -> None:
        """Print a run's summary table again (what `ivx run` / `ivx train` printed)."""
        opened = _open(run)
        manifest = opened.manifest
        typer.echo(f"{run}  {manifest.get('name', '')}  status {manifest.get('status')}")
        typer.echo(opened.table())

    @app.command("compare")
    def compare_command(
        run_a: Annotated[Path, typer.Argument(help="Run A.")],
        run_b: Annotated[Path, typer.Argument(help="Run B.")],
    ) -> None:
        """Metric means of two runs at every grid point, and their difference B − A."""
        from ivx.results import tables as report
        from ivx.results.runs import compare

        header, rows = compare(_open(run_a).summary, _open(run_b).summary)
        typer.echo(report.wrap(header, rows))


def _open(path: Path) -> Any:
    from ivx.api import Run

    try:
        return Run(path)
    except FileNotFoundError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
