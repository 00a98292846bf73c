"""`ivx save`, `ivx push`, `ivx pull`: intervention bundles and the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

from ivx.results import train_report
from ivx.store import bundle
from ivx.store.bundle import BundleError
from ivx.store.hub import HubError, HubPathError, parse_ref, pull, push


def register(app: typer.Typer) -> None:
    """Add `save`, `push` and `pull`."""
    app.command("save")(save_command)
    app.command("push")(push_command)
    app.command("pull")(pull_command)


def _fail(exc: Exception) -> NoReturn:
    """Exit 2 for a wrong input (not a bundle or run), 1 when the Hub or the network failed."""

    typer.echo(f"error: {exc}", err=True)

    raise typer.Exit(2 if isinstance(exc, HubPathError | BundleError) else 1) from None


def _check(ref: str) -> None:
    """A malformed repository id is a user error (exit 2), for push and pull alike."""

    try:
        parse_ref(ref)
    except HubError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def save_command(
    run_dir: Annotated[Path, typer.Argument(help="A finished run with computed or trained interventions.")],
    out: Annotated[Path, typer.Option("--out", help="Bundle directory to write.")],
    point: Annotated[
        int | None,
        typer.Option("--point", help="`ivx train` runs: this grid point (default: bundle/'s best)."),
    ] = None,
) -> None:
    """Turn a run's vectors / trained parameters into an intervention bundle."""

    try:
        if point is not None:
            path = train_report.export_point(run_dir, point, out)
        else:
            path = bundle.from_run(run_dir, out)
    except bundle.BundleError as exc:
        _fail(exc)
    typer.echo(str(path))


def push_command(
    path: Annotated[Path, typer.Argument(help="A bundle, a complete run, or an SAE directory.")],
    repo: Annotated[str, typer.Option("--repo", help="Target repository, user/name.")],
    private: Annotated[bool, typer.Option("--private", help="Create the repository as private.")] = False,
    revision: Annotated[str | None, typer.Option("--revision", help="Branch to commit to.")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be uploaded; no network.")
    ] = False,
    message: Annotated[str | None, typer.Option("--message", help="Commit message.")] = None,
) -> None:
    """Publish a bundle or a finished run to the Hugging Face Hub in one commit."""

    _check(repo)
    try:
        result = push(path, repo, private, revision, dry_run, message)
    except HubError as exc:
        _fail(exc)
    if isinstance(result, list):
        total = 0
        for rel, size in result:
            typer.echo(f"{size:>12,}  {rel}")
            total += size
        typer.echo(f"{len(result)} files, {total:,} bytes would be uploaded to {repo} (dry run)")
        return
    typer.echo(result)


def pull_command(
    ref: Annotated[str, typer.Argument(help="user/name[@revision] or hf://user/name[@revision].")],
    out: Annotated[Path | None, typer.Option("--out", help="Copy the files into this directory.")] = None,
) -> None:
    """Download a bundle or run from the Hub (cached in the usual HF cache)."""

    _check(ref)
    try:
        path = pull(ref, out)
    except HubError as exc:
        _fail(exc)
    typer.echo(str(path))
