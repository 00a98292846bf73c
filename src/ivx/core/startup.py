"""Where a process's start-up goes (imports, model load, hashing), recorded apart from its cells.

A run's manifest says how long its cells took; before them the process started Python, imported
torch and transformers, loaded the model and hashed its inputs. `timed(part)` adds a stretch to
one part (a stretch inside another is counted once, in the inner part); `record()` is the
manifest's `startup` entry, whose `total` runs from the process's own start (the kernel's
clock, so interpreter start-up counts too).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

_IMPORTED = time.perf_counter()
_SPENT: dict[str, float] = {}
_STACK: list[list[float]] = []  # per open stretch: [its start, seconds spent in stretches inside it]


def process_seconds() -> float:
    """Seconds since this process started (Linux: /proc; elsewhere: since ivx was imported)."""
    try:
        with open("/proc/self/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start time after boot
        return max(0.0, uptime - started)
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _IMPORTED


@contextmanager
def timed(part: str) -> Iterator[None]:
    """Add the time inside the block to `part` (minus the parts timed inside it)."""
    _STACK.append([time.perf_counter(), 0.0])
    try:
        yield
    finally:
        begun, inner = _STACK.pop()
        spent = time.perf_counter() - begun
        _SPENT[part] = _SPENT.get(part, 0.0) + spent - inner
        if _STACK:
            _STACK[-1][1] += spent


def spent() -> dict[str, float]:
    """Seconds per part so far."""
    return dict(_SPENT)


def record(parts: tuple[str, ...] = ("imports", "model_load", "hashing")) -> dict[str, float]:
    """The manifest's `startup`: each part, `other` (Python, config, tokens, plan) and `total`."""
    total = process_seconds()
    out = {part: round(_SPENT.get(part, 0.0), 3) for part in parts}
    out["other"] = round(max(0.0, total - sum(out.values())), 3)
    out["total"] = round(total, 3)
    return out


def leave(code: int | str | None) -> None:
    """Exit now, skipping the interpreter's teardown of torch and transformers (1–2 s on a 2-core
    machine): atexit handlers run and the standard streams are flushed first. Falls back to a
    normal exit while another non-daemon thread runs or torch was never imported."""
    import atexit
    import sys
    import threading

    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if "torch" not in sys.modules or others:
        raise SystemExit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if isinstance(code, str):
        print(code, file=sys.stderr, flush=True)
    os._exit(1 if isinstance(code, str) else code or 0)
