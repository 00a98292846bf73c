"""`ivx toy ...`: retrain the bundled model and re-export its datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ivx.model import loading as models
from ivx.toy.export import export
from ivx.toy.train import Settings, train

toy_app = typer.Typer(
    help="The bundled ivx-toy model: retrain it, export its datasets.", no_args_is_help=True
)


@toy_app.command("train")
def train_command(
    out: Annotated[Path, typer.Option("--out", help="Directory for the trained model.")],
    seed: Annotated[int, typer.Option(help="Seed of the world and of training.")] = 0,
    steps: Annotated[int, typer.Option(help="Optimisation steps.")] = 2500,
    threads: Annotated[int, typer.Option(help="torch CPU threads.")] = 2,
) -> None:
    """Train ivx-toy from scratch on CPU; fails (exit 1) below the accuracy bar."""

    try:
        report = train(
            out, Settings(seed=seed, steps=steps, threads=threads), log=lambda m: typer.echo(m, err=True)
        )
    except RuntimeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"trained in {report['seconds']} s; held-out accuracy {report['accuracy']}", err=True)
    typer.echo(str(out))


@toy_app.command("export")
def export_command(
    out: Annotated[Path, typer.Option("--out", help="Directory for the JSONL files.")] = Path("configs/data"),
    seed: Annotated[int, typer.Option(help="Seed of the world.")] = 0,
    model: Annotated[str, typer.Option(help="Keep only facts this model answers correctly.")] = "ivx-toy",
) -> None:
    """Write facts.jsonl, ioi.jsonl and city_swap.jsonl (prompt records for configs)."""

    lm = models.load(model)
    counts = export(out, seed, lm.model, lm.tokenizer)
    for name, n in counts.items():
        typer.echo(f"{out / name}: {n} records")


def register(app: typer.Typer) -> None:
    """Add the `toy` command group."""
    app.add_typer(toy_app, name="toy")
