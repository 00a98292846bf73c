"""User errors at the command line: one wrapper for every command, one line each, exit code 2.

A user error means the input is wrong (a config problem, an unknown model, a bad bundle, vector
or run directory), not that ivx failed: it prints `file:line  dotted.path  message` lines (config
problems) or one `error: ...` line, never a traceback, and exits 2. Anything else propagates.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer

P = ParamSpec("P")
R = TypeVar("R")
USER_ERROR_EXIT = 2


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the input is wrong (exit 2, one line), not that ivx failed."""
    import pickle

    from ivx.bundle import BundleError
    from ivx.components import ComponentError
    from ivx.config import ConfigError
    from ivx.hub import HubError
    from ivx.models import ModelLoadError
    from ivx.positions import PositionError
    from ivx.rundir import RunDirError
    from ivx.vectors import VectorError

    return (
        ConfigError,
        ModelLoadError,
        PositionError,
        VectorError,
        BundleError,
        HubError,
        RunDirError,
        ComponentError,
        pickle.UnpicklingError,
    )


def report(exc: BaseException) -> None:
    """Print a user error: every config problem on its own line, or one `error:` line."""
    from ivx.config import ConfigError

    if isinstance(exc, ConfigError):
        for problem in exc.problems:
            typer.echo(problem.format(), err=True)
        typer.echo(f"{len(exc.problems)} problem(s) found; nothing was run.", err=True)
        return
    typer.echo(f"error: {' '.join(str(exc).split()) or type(exc).__name__}", err=True)


def guard(fn: Callable[P, R]) -> Callable[P, R]:
    """Wrap a command: user errors become clean messages and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if isinstance(exc, user_errors()):
                report(exc)
                raise typer.Exit(USER_ERROR_EXIT) from None
            raise

    return wrapper
