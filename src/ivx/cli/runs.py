"""`ivx ls`, `ivx show`, `ivx compare`: run directories as a collection."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ivx.api import Run
from ivx.cli.errors import guard
from ivx.results import tables as report
from ivx.results.report.index import write_compare
from ivx.results.runs import CompareError, check_comparable, compare, listing, resolve

RunsDir = Annotated[Path, typer.Option("--runs-dir", help="Where a bare run name is looked up.")]


def register(app: typer.Typer) -> None:
    """Add `ls`, `show` and `compare`."""

    @app.command("ls")
    def ls_command(
        runs_dir: Annotated[Path, typer.Argument(help="Directory holding run directories.")] = Path("runs"),
    ) -> None:
        """List the runs in RUNS_DIR: name, status, cells, wall time, created."""

        rows = listing(runs_dir)
        if not rows:
            typer.echo(f"no runs in {runs_dir}", err=True)
            return
        header = list(rows[0])
        typer.echo(report.wrap(header, [[str(r[h]) for h in header] for r in rows], width=10_000))

    @app.command("show")
    @guard
    def show_command(
        run: Annotated[Path, typer.Argument(help="A run directory, or a run name `ivx ls` prints.")],
        runs_dir: RunsDir = Path("runs"),
    ) -> None:
        """Print a run's summary table again (what `ivx run` / `ivx train` printed)."""
        opened = open_run(run, runs_dir)
        manifest = opened.manifest
        typer.echo(f"{opened.path}  {manifest.get('name', '')}  status {manifest.get('status')}")
        typer.echo(opened.table())

    @app.command("compare")
    @guard
    def compare_command(
        run_a: Annotated[Path, typer.Argument(help="Run A (directory or name).")],
        run_b: Annotated[Path, typer.Argument(help="Run B (directory or name).")],
        html: Annotated[
            bool, typer.Option("--html", help="Also write a side-by-side page: A, B and B − A figures.")
        ] = False,
        out: Annotated[Path | None, typer.Option("--out", help="The --html page's path.")] = None,
        runs_dir: RunsDir = Path("runs"),
    ) -> None:
        """Metric means of two runs at every grid point, and their difference B − A (the grids must match)."""

        a, b = open_run(run_a, runs_dir), open_run(run_b, runs_dir)
        check_comparable(a.summary, b.summary, f"A ({a.path.name})", f"B ({b.path.name})")
        header, rows = compare(a.summary, b.summary)
        typer.echo(report.wrap(header, rows))
        if html:
            page = write_compare(a.path, b.path, out or Path(f"compare_{a.path.name}_vs_{b.path.name}.html"))
            typer.echo(f"wrote {page}")


def open_run(path: Path, runs_dir: Path = Path("runs")) -> Any:
    """A run by directory, or by the name `ivx ls` prints (its directory under runs_dir, else the
    newest run of that experiment name)."""

    found = resolve(path, runs_dir)
    if found is None:
        raise CompareError(
            f"{path} is not an ivx run directory (no manifest.json), nor a run in {runs_dir}/ "
            f"(list them with: ivx ls {runs_dir})"
        )
    return Run(found)
