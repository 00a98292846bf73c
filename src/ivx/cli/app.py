"""The `ivx` command line: a thin typer layer over the pipeline stages."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, cast

import typer

from ivx.api import Run
from ivx.cli import generate, hub, report, runs, toy, train
from ivx.cli import sae as sae_cli
from ivx.cli.errors import USER_ERRORS, guard
from ivx.cli.options import DEFAULT_MAX_CELLS, ConfigArg, ForceOpt, MaxCellsOpt, SetOpt, cap
from ivx.config import docs, tl_names
from ivx.core import startup, threads
from ivx.core.version import VERSION as __version__
from ivx.engine import shortcuts
from ivx.methods import verification
from ivx.model import components as comps
from ivx.model import loading as models
from ivx.plan import estimate
from ivx.plan.edits import Mode
from ivx.recipes import prepare
from ivx.recipes import run as experiment
from ivx.results import controls, rundir, sae, summary

app = typer.Typer(
    name="ivx",
    help="Causal interventions on Hugging Face causal language models, from one YAML file.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)

# Modules that add their own commands with `register(app)` (no torch at import time).
_COMMAND_MODULES = (generate, train, hub, runs, report, toy, sae_cli)


def _err(message: str) -> None:
    typer.echo(message, err=True)


def _hide_flag_types() -> None:
    """Flags take no value: show no `<bool>` type beside them in --help (typer ≥ 0.29 does)."""
    from typer.core import TyperOption

    show = getattr(TyperOption, "display_type_rich", None)
    if show is None or getattr(show, "_ivx", False):
        return

    def display_type_rich(self: TyperOption, ctx: object) -> str | None:
        return None if self.is_flag else show(self, ctx)

    display_type_rich._ivx = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_hide_flag_types()


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ivx {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Causal interventions on Hugging Face causal language models, from one YAML file."""


def console() -> object:
    """A rich console that never cuts a table: when output is piped, lines may be long."""
    import sys

    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 250)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Command(str, Enum):
    """The command `ivx validate --for` checks a config for."""

    run = "run"
    generate = "generate"
    train = "train"
    sae_train = "sae_train"


@app.command()
@guard
def validate(
    config: ConfigArg,
    set_: SetOpt = None,
    weights: Annotated[
        bool,
        typer.Option(
            "--weights",
            help="Also load the weights and run what needs forward passes (trace.select_correct). "
            "By default the model is built on the meta device from its config: fast, nothing big read.",
        ),
    ] = False,
    max_cells: MaxCellsOpt = DEFAULT_MAX_CELLS,
    force: ForceOpt = False,
    command: Annotated[
        Command,
        typer.Option(
            "--for",
            help="The command the config is checked for: exactly what `ivx run`, `ivx generate` or "
            "`ivx train` would reject, including the fields and controls that command ignores "
            "(`train:` under run, `on:` outside generate, shuffled_labels outside train, ...).",
        ),
    ] = Command.run,
) -> None:
    """Check a config for a command (schema, ignored fields, files, model-aware checks) and print the
    plan size and estimates: what `ivx run|generate|train` would reject, validate rejects."""

    if command is Command.sae_train:  # `ivx sae train` trains on activations: no plan of cells (cli/sae.py)
        return sae_cli.print_check(config, tuple(set_ or ()), weights)

    mode = cast(Mode, command.value)
    preps = prepare.prepare_all(
        config, tuple(set_ or ()), weights=weights, max_cells=cap(max_cells, force), mode=mode
    )
    _print_plan(config, preps, weights)


def _print_plan(config: Path, preps: list[Any], weights: bool) -> None:
    """`ivx validate`'s report: model, prompts, sweep, cells, tensors and estimates, warnings."""

    prep = preps[0]
    exp = prep.cfg.experiment
    info = prep.lm.info
    cells = sum(len(p.plan.cells) for p in preps)
    rows = 0
    for p in preps:
        corrupt = p.cfg.experiment.corrupt  # one variant per Prepared: never a list here
        noisy = corrupt is not None and not isinstance(corrupt, list) and corrupt.kind == "noise"
        samples = corrupt.samples if noisy and corrupt is not None and not isinstance(corrupt, list) else 1
        rows += len(p.plan.cells) * samples
    typer.echo(f"{config}: ok")
    typer.echo(
        f"  model      {exp.model.name} ({info.model_type}, {info.n_layers} layers, d_model {info.d_model})"
    )
    typer.echo(
        f"  prompts    {len(prep.prompts)}" + (f" ({len(prep.dropped)} dropped)" if prep.dropped else "")
    )
    typer.echo("  sweep      " + (", ".join(f"{k}={v}" for k, v in exp.sweep.items()) or "none"))
    if len(preps) > 1:
        typer.echo("  corruption " + ", ".join(str(p.label) for p in preps))
    typer.echo(f"  cells      {cells} ({rows} forward rows)")
    size = estimate.tensor_bytes(preps)
    typer.echo(f"  tensors    ~{estimate.human_size(size)} of logits (output.logits: {exp.output.logits})")
    typer.echo(f"  estimate   {estimate.describe(preps, size)}")
    warning = estimate.size_warning(preps)
    for text in ([warning] if warning else []) + summary.scoring_warnings(prep.prompts, exp.answer):
        _err(f"warning: {text}")
    trace = exp.trace
    if trace is not None and trace.select_correct and not weights:
        typer.echo("  note       trace.select_correct drops facts at run time (see them now: --weights)")


@app.command()
@guard
def run(
    config: Annotated[Path | None, typer.Argument(help="Experiment YAML file.", show_default=False)] = None,
    set_: SetOpt = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Root directory for the run (overrides output.root).")
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option("--resume", help="Continue an interrupted run directory; computes only missing cells."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or tables.")] = False,
    backend: Annotated[
        str | None,
        typer.Option("--backend", help="local or ray (default: the config's `backend`).", show_default=False),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(
            "--address", help="Ray cluster: auto or HOST:PORT (default: a local Ray).", show_default=False
        ),
    ] = None,
    max_cells: MaxCellsOpt = DEFAULT_MAX_CELLS,
    force: ForceOpt = False,
) -> None:
    """Run an experiment; the last line printed is the run directory."""

    if _nothing_to_run(config, set_, resume):
        return
    started: list[Path] = []
    try:
        with rundir.signals_interrupt():
            run_dir = experiment.run(
                config or Path(),
                tuple(set_ or ()),
                str(out) if out else None,
                resume,
                progress=not quiet,
                on_start=started.append,
                max_cells=cap(max_cells, force),
                backend=backend,
                address=address,
            )
    except Exception as exc:
        if isinstance(exc, USER_ERRORS):
            raise
        _run_failed(exc, started)
    except KeyboardInterrupt as exc:
        _run_failed(exc, started)
    if not quiet:
        _print_summary(run_dir)
    typer.echo(str(run_dir))


def _nothing_to_run(config: Path | None, set_: list[str] | None, resume: Path | None) -> bool:
    """`ivx run`'s arguments: exit 2 unless CONFIG or --resume alone; True for a complete run."""

    if config is None and resume is None:
        _err("error: give a CONFIG file, or --resume RUN_DIR")
        raise typer.Exit(2)
    if resume is not None and (config is not None or set_):
        given = "CONFIG argument" if config is not None else "--set"
        _err(
            f"error: --resume takes no {given}: a resumed run uses the config and --set overrides "
            f"recorded in {resume / 'manifest.json'}; start a new run to change them"
        )
        raise typer.Exit(2)
    if resume is not None and rundir.Manifest.read(resume).data["status"] == "complete":
        _err(f"{resume} is already complete; nothing to resume")
        typer.echo(str(resume))
        return True
    return False


def _print_summary(run_dir: Path) -> None:
    """The run's terminal tables, scored tokens, attribution checks, warnings and shortcuts, on stderr."""

    run = Run(run_dir)
    _err(run.table())
    scored = summary.scored_text(run.summary.get("prompts") or [])
    if scored:
        _err(scored)
    checks = run.summary.get("attribution_verification")
    if checks:
        for label, report in checks.items() if "metrics" not in checks else [(None, checks)]:
            _err((f"== {label} corruption ==\n" if label else "") + verification.text(report))
    for line in controls.text(run.summary) + sae.text(run.summary):
        _err(line)
    for warning in run.summary.get("warnings", []):
        _err(f"warning: {warning}")
    report = run.manifest.get("shortcuts") or {}
    for label, part in report.items() if "groups" not in report else [(None, report)]:
        lines = shortcuts.describe(part)
        _err("\n".join([lines[0] + (f" [{label}]" if label else ""), *lines[1:]]))


def _run_failed(exc: BaseException, started: list[Path]) -> None:
    """One line for a runtime failure (exit 1), naming the run directory only if there is one."""
    what = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
    if started and (started[0] / "manifest.json").is_file():
        where = f"{started[0]} is marked failed; `ivx run --resume {started[0]}` continues it"
    else:
        where = "no run directory was written"
    reason = (
        _one_line(exc) if str(exc) else ("SIGINT" if isinstance(exc, KeyboardInterrupt) else _one_line(exc))
    )
    _err(f"error: run {what}: {reason} ({where})")
    if isinstance(exc, KeyboardInterrupt):  # Ctrl-C / SIGTERM: the way back is the last line
        if started:
            _err(f"resume: ivx run --resume {started[0]}")
        raise typer.Exit(143 if "SIGTERM" in str(exc) else 130) from None
    raise typer.Exit(1) from None


@app.command()
@guard
def components(
    model: Annotated[str, typer.Argument(help="Model: hub id, local directory or ivx-toy.")],
    revision: Annotated[str | None, typer.Option(help="Hub revision.")] = None,
) -> None:
    """List the components, layers and heads of a model, with shapes."""
    from rich.table import Table

    lm = models.load(model, revision, weights=False)  # structure only: no weights are read
    info = lm.info
    out: Any = console()
    out.print(
        f"[bold]{model}[/]  {info.model_type} (layout {info.layout}): {info.n_layers} layers, "
        f"d_model {info.d_model}, {info.n_heads} heads ({info.n_kv_heads} key/value), head_dim "
        f"{info.head_dim}, d_mlp {info.d_mlp}, vocab {info.vocab_size}"
    )
    from rich.markup import escape

    table = Table("component", "module (layer N)", "hook", "shape", "TransformerLens")
    for column in table.columns:
        column.overflow = "fold"  # wrap, never "…"
    for row in comps.table(lm.model, info):
        tl = tl_names.tl_name(str(row["name"]))
        cells = (str(row["name"]), str(row["module"]), str(row["hook"]), escape(str(row["shape"])))
        table.add_row(*cells, escape(f"blocks.N.{tl}" if tl and tl != "hook_embed" else tl))
    out.print(table)


@app.command()
def schema(
    section: Annotated[
        str | None,
        typer.Argument(
            help="One section (model, corrupt, interventions, batch, ...); default: all.", show_default=False
        ),
    ] = None,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the whole reference as Markdown.")
    ] = False,
) -> None:
    """Every experiment-file field: type, default and meaning (from the validator's own schema)."""
    from rich.markup import escape
    from rich.table import Table

    if markdown:
        typer.echo(docs.markdown())
        return
    known = docs.sections()
    if section is not None and section not in known:
        import difflib

        near = difflib.get_close_matches(section, known, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        _err(f"error: unknown section {section!r}{hint}; sections: {', '.join(known)}")
        raise typer.Exit(2)
    out: Any = console()
    for name in [section] if section else list(known):
        table = Table(
            "field", "type", "default", "description", title=f"[bold]{name}[/]", title_justify="left"
        )
        for column in table.columns:
            column.overflow = "fold"
        for row in docs.rows(name):
            table.add_row(*(escape(row[k]) for k in ("field", "type", "default", "description")))
        out.print(table)


def _register_all() -> None:
    for module in _COMMAND_MODULES:
        module.register(app)


_register_all()


def main() -> None:
    """Console-script entry point."""

    try:  # before anything imports torch: OpenMP reads its wait policy once, when torch loads it
        threads.configure()
    except threads.ThreadsError as exc:
        _err(f"error: {exc}")
        raise SystemExit(2) from None
    try:
        app()
    except SystemExit as exc:
        startup.leave(exc.code)
    startup.leave(0)
