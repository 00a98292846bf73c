"""`ivx sae ...`: sparse autoencoders; `ivx sae train CONFIG` trains one on a site's activations."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ivx.cli.errors import guard
from ivx.recipes import sae_train
from ivx.results import rundir, sae_report

sae_app = typer.Typer(help="Sparse autoencoders: train one on a site's activations.", no_args_is_help=True)


class _Bar:
    """The training progress bar (rich, on stderr): steps, loss, L0, dead fraction."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self.task: Any = None

    def __call__(self, phase: str, done: int, total: int, last: dict[str, float]) -> None:
        if not self.enabled:
            return
        if phase == "activations":
            typer.echo(f"collected {total:,} activations", err=True)
            return
        if self.bar is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("[bold]steps"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[values]}"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self.bar.start()
            self.task = self.bar.add_task("steps", total=total, values="")
        values = "  ".join(
            f"{key} {last[key]:.4g}" for key in ("loss", "mse", "l0", "dead_fraction") if key in last
        )
        self.bar.update(self.task, completed=done, values=values)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


@sae_app.command("train")
@guard
def train_command(
    config: Annotated[
        Path | None, typer.Argument(help="YAML with `model:`, `prompts:` and `sae_train:`.")
    ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a config field.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Root directory for the run.")] = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="Continue an interrupted run from its last checkpoint.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train a sparse autoencoder; the run directory holds it in SAELens's layout, a model card and curves."""
    import json

    if (config is None) == (resume is None):
        typer.echo("error: give CONFIG or --resume RUN_DIR (not both)", err=True)
        raise typer.Exit(2)
    bar = _Bar(not quiet)
    started: list[Path] = []
    try:
        with rundir.signals_interrupt():
            where = str(out) if out else None
            run_dir = sae_train.train(config or Path(), tuple(set_ or ()), where, resume, bar, started.append)
    except KeyboardInterrupt as exc:
        bar.close()
        target = started[0] if started else "RUN_DIR"
        typer.echo(f"interrupted; continue with: ivx sae train --resume {target}", err=True)
        raise typer.Exit(143 if "SIGTERM" in str(exc) else 130) from None
    finally:
        bar.close()
    summary = json.loads((run_dir / "summary.json").read_text())
    typer.echo(sae_report.summary_line(summary["final"]), err=True)
    typer.echo(str(run_dir))


def print_check(config: Path, overrides: tuple[str, ...], weights: bool = False) -> None:
    """`ivx validate --for sae_train`: the checks of `ivx sae train` and the size of the training."""

    prep = sae_train.prepare(config, overrides, weights=weights)
    tokens = sum(p.length for p in prep.prompts)
    held = int(tokens * prep.settings.eval_fraction)
    plan = sae_train.plan_for(prep, tokens - held)
    exp, info = prep.cfg.experiment, prep.lm.info
    k = f", k {plan.k}" if plan.k else ""
    typer.echo(f"{config}: ok")
    typer.echo(
        f"  model       {exp.model.name} ({info.model_type}, {info.n_layers} layers, d_model {info.d_model})"
    )
    typer.echo(
        f"  site        {sae_train.hook_name(prep.site)} ({prep.site.component}, layer {prep.site.layer})"
    )
    typer.echo(f"  prompts     {len(prep.prompts)}")
    typer.echo(f"  activations {tokens:,} ({tokens - held:,} train, {held:,} held out) × {plan.d_in}")
    typer.echo(f"  sae         {plan.architecture}, {plan.d_sae} latents{k}")
    typer.echo(f"  training    {plan.steps:,} steps × {min(plan.batch_size, tokens - held)} activations")


def register(app: typer.Typer) -> None:
    """Add the `sae` command group."""
    app.add_typer(sae_app, name="sae")
