"""The `ivx` command line: a thin typer layer over the pipeline stages."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="ivx",
    help="Causal interventions on Hugging Face causal language models, from one YAML file.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)

# Modules that add their own commands with `register(app)` (no torch at import time).
_COMMAND_MODULES: tuple[str, ...] = ("ivx.generate", "ivx.train", "ivx.hub", "ivx.toy.cli")


def _err(message: str) -> None:
    typer.echo(message, err=True)


def _user_errors(fn):  # type: ignore[no-untyped-def]
    """Turn user errors (bad config, unknown model) into clean messages and exit code 2."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        from ivx.config import ConfigError

        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            for problem in exc.problems:
                _err(problem.format())
            _err(f"{len(exc.problems)} problem(s) found; nothing was run.")
            raise typer.Exit(2) from None
        except Exception as exc:
            from ivx.models import ModelLoadError
            from ivx.positions import PositionError
            from ivx.vectors import VectorError

            if isinstance(exc, ModelLoadError | PositionError | VectorError):
                _err(f"error: {exc}")
                raise typer.Exit(2) from None
            raise

    return wrapper


ConfigArg = Annotated[Path, typer.Argument(help="Experiment YAML file.", show_default=False)]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config field, e.g. --set seed=3 --set corrupt.samples=2."),
]


@app.command()
@_user_errors
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
) -> None:
    """Check a config (schema, files, model-aware checks) and print the plan size."""
    from ivx import experiment

    preps = experiment.prepare_all(config, tuple(set_ or ()), weights=weights)
    prep = preps[0]
    exp = prep.cfg.experiment
    info = prep.lm.info
    cells = sum(len(p.plan.cells) for p in preps)
    rows = 0
    for p in preps:
        corrupt = p.cfg.experiment.corrupt
        rows += len(p.plan.cells) * (
            corrupt.samples if corrupt is not None and corrupt.kind == "noise" else 1
        )
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
    size = experiment.tensor_bytes(preps)
    typer.echo(f"  tensors    ~{experiment.human_size(size)} of logits (output.logits: {exp.output.logits})")
    warning = experiment.size_warning(preps)
    if warning:
        _err(f"warning: {warning}")
    trace = exp.trace
    if trace is not None and trace.select_correct and not weights:
        typer.echo("  note       trace.select_correct drops facts at run time (see them now: --weights)")


@app.command()
@_user_errors
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
) -> None:
    """Run an experiment; the last line printed is the run directory."""
    from ivx import experiment

    if config is None and resume is None:
        _err("error: give a CONFIG file, or --resume RUN_DIR")
        raise typer.Exit(2)
    if resume is not None and not (resume / "manifest.json").is_file():
        _err(f"error: {resume} is not an ivx run directory (no manifest.json)")
        raise typer.Exit(2)
    try:
        run_dir = experiment.run(
            config or Path(),
            tuple(set_ or ()),
            str(out) if out else None,
            resume,
            progress=not quiet,
            backend=backend,
            address=address,
        )
    except (KeyboardInterrupt, RuntimeError, OSError) as exc:
        _err(
            f"error: run failed: {type(exc).__name__}: {exc} (the run directory is marked failed; "
            "`ivx run --resume RUN_DIR` continues it)"
        )
        raise typer.Exit(1) from None
    if not quiet:
        import json

        summary = json.loads((run_dir / "summary.json").read_text())
        from ivx import tracing

        for label, trace in (summary.get("traces") or {None: summary.get("trace")}).items():
            if trace:
                _err((f"== {label} corruption ==\n" if label else "") + tracing.table_text(trace))
        checks = summary.get("attribution_verification")
        if checks:
            from ivx import verification

            for label, report in checks.items() if "metrics" not in checks else [(None, checks)]:
                _err((f"== {label} corruption ==\n" if label else "") + verification.text(report))
        for warning in summary.get("warnings", []):
            _err(f"warning: {warning}")
        _print_shortcuts(run_dir)
    typer.echo(str(run_dir))


def _print_shortcuts(run_dir: Path) -> None:
    """Which exact shortcuts ran (per corruption and prompt length), from the manifest."""
    import json

    from ivx import shortcuts

    report = json.loads((run_dir / "manifest.json").read_text()).get("shortcuts") or {}
    for label, part in report.items() if "groups" not in report else [(None, report)]:
        lines = shortcuts.describe(part)
        _err("\n".join([f"{lines[0]}" + (f" [{label}]" if label else ""), *lines[1:]]))


@app.command()
@_user_errors
def components(
    model: Annotated[str, typer.Argument(help="Model: hub id, local directory or ivx-toy.")],
    revision: Annotated[str | None, typer.Option(help="Hub revision.")] = None,
) -> None:
    """List the components, layers and heads of a model, with shapes."""
    from rich.console import Console
    from rich.table import Table

    from ivx import components as comps
    from ivx import models

    lm = models.load(model, revision, weights=False)  # structure only: no weights are read
    info = lm.info
    console = Console()
    console.print(
        f"[bold]{model}[/]  {info.model_type} (layout {info.layout}): {info.n_layers} layers, "
        f"d_model {info.d_model}, {info.n_heads} heads ({info.n_kv_heads} key/value), head_dim "
        f"{info.head_dim}, d_mlp {info.d_mlp}, vocab {info.vocab_size}"
    )
    from rich.markup import escape

    table = Table("component", "module (layer N)", "hook", "shape")
    for row in comps.table(lm.model, info):
        table.add_row(str(row["name"]), str(row["module"]), str(row["hook"]), escape(str(row["shape"])))
    console.print(table)


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
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from ivx import reference

    if markdown:
        typer.echo(reference.markdown())
        return
    known = reference.sections()
    if section is not None and section not in known:
        import difflib

        near = difflib.get_close_matches(section, known, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        _err(f"error: unknown section {section!r}{hint}; sections: {', '.join(known)}")
        raise typer.Exit(2)
    console = Console()
    for name in [section] if section else list(known):
        table = Table(
            "field", "type", "default", "description", title=f"[bold]{name}[/]", title_justify="left"
        )
        for row in reference.rows(name):
            table.add_row(*(escape(row[k]) for k in ("field", "type", "default", "description")))
        console.print(table)


def _register_all() -> None:
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue
            raise
        module.register(app)


_register_all()


def main() -> None:
    """Console-script entry point."""
    app()
