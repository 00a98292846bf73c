"""The one user-error wrapper of every command: `file:line  dotted.path  message` lines, exit 2.

A `UserError` (`ivx.core.errors`) means the input is wrong, not that ivx failed: it prints one line
per config problem, or one `error: ...` line, never a traceback, and exits 2. Anything else
propagates (a run failure: exit 1, the run directory marked failed).
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer

from ivx.core.errors import ConfigError, UserError

P = ParamSpec("P")
R = TypeVar("R")
USER_ERROR_EXIT = 2
# a tampered pickle inside a pyvene directory is the input's fault too
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, pickle.UnpicklingError)


def report(exc: BaseException) -> None:
    """Print a user error: every config problem on its own line, or one `error:` line."""
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
        except USER_ERRORS as exc:
            report(exc)
            raise typer.Exit(USER_ERROR_EXIT) from None

    return wrapper
