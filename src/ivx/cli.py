"""The `ivx` command line: a thin typer layer over the pipeline stages."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="ivx",
    help="Causal interventions on Hugging Face causal language models, from one YAML file.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)

# Modules that add their own commands with `register(app)`; imported lazily-cheap (no torch at import).
_COMMAND_MODULES: tuple[str, ...] = ()


def _register_all() -> None:
    for name in _COMMAND_MODULES:
        module = importlib.import_module(name)
        module.register(app)


def main() -> None:
    """Console-script entry point."""
    _register_all()
    app()
