"""`ivx report`: rebuild a run's report.html, or write the index page of a runs directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ivx.cli.errors import guard
from ivx.results.report import page
from ivx.results.report.index import write_index
from ivx.results.runs import listing, resolve


def register(app: typer.Typer) -> None:
    """Add `report`."""

    @app.command("report")
    @guard
    def report_command(
        target: Annotated[
            Path, typer.Argument(help="A run directory (or name), or a directory of runs.")
        ] = Path("runs"),
        runs_dir: Annotated[
            Path, typer.Option("--runs-dir", help="Where a bare run name is looked up.")
        ] = Path("runs"),
    ) -> None:
        """Rebuild RUN/report.html; for a directory of runs, write RUNS_DIR/index.html linking to each
        run's report (writing the reports that are missing)."""

        run = resolve(target, runs_dir)
        if run is not None:
            typer.echo(str(page.write(run)))
            return
        found = listing(target) if target.is_dir() else []
        if not found:
            raise page.ReportError(f"{target} is neither a run directory nor a directory of runs")
        for row in found:
            if not (target / row["run"] / "report.html").is_file() and row["status"] == "complete":
                page.write(target / row["run"])
        typer.echo(str(write_index(target)))
