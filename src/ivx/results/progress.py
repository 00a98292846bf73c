"""The cells progress bar of `ivx run` (rich, on stderr), with the rate in cells/s."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class ProgressBar:
    """A rich progress bar with cells/s (or nothing when disabled); entering it yields `advance(n)`."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled = enabled
        self.total = total

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda n: None
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("[bold]cells"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self.bar.__enter__()
        self.task = self.bar.add_task("cells", total=self.total, rate="")
        self.t0 = time.perf_counter()
        self.count = 0

        def advance(n: int) -> None:
            self.count += n
            rate = self.count / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.update(self.task, advance=n, rate=f"{rate:,.1f} cells/s")

        return advance

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)
