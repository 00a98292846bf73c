"""What a finished run publishes after it is marked complete: report.html (unless `output.report:
false`) and the trackers of `output.trackers`. Neither can lose the run: a failure warns."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ivx.results import trackers
from ivx.results.report import page


def _stderr(text: str) -> None:
    print(text, file=sys.stderr)


def publish(run_dir: Path, output: Any, warn: Callable[[str], object] = _stderr) -> None:
    """Write report.html and log to the trackers `output` (the config's `output:`) asks for."""
    if getattr(output, "report", True):
        try:
            page.write(run_dir)
        except Exception as exc:  # the results are written: a report problem only warns
            warn(
                f"warning: report.html not written ({type(exc).__name__}: {exc}); "
                f"rebuild it with: ivx report {run_dir}"
            )
    names = list(getattr(output, "trackers", None) or [])
    if names:
        trackers.log(run_dir, names, warn)
