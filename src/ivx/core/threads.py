"""How many threads torch uses and how they wait: a fair share on a machine that others use too.

torch's CPU kernels run on an OpenMP pool whose threads spin at every barrier by default; ivx runs
many small per-block forwards, so with one busy neighbour the spinning threads fight it for the
cores and a run took 5× its idle time. ivx therefore starts torch with `OMP_WAIT_POLICY=PASSIVE`
(waiting threads sleep), and with the thread count a setting asks for. Both are environment variables
the OpenMP runtime reads once, when torch loads it, so `configure()` runs before `import torch`
(the CLI's entry point and `ivx.run`); afterwards only the count can change
(`torch.set_num_threads`). The thread count never changes which cells share a forward: packing
depends on the plan and the memory budget only.

Who decides, first match wins: the caller's `OMP_NUM_THREADS` / `OMP_WAIT_POLICY`, then
`IVX_THREADS` (a count, `auto`, or `off`: change nothing), then the config's `threads:`, then
`auto`: torch's own count (so by default every result is bit-identical to before: CPU results
depend on the thread count in their last bits) with passive waiting.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass

from ivx.core.errors import UserError

ENV = "IVX_THREADS"
WAIT = "PASSIVE"
_SET_BY_IVX: set[str] = set()  # environment variables this process set (not the caller's)
_BEFORE: list[int] = []  # torch's own thread count, kept the first time ivx changes it


class ThreadsError(UserError):
    """A thread setting that is not a count, auto or off."""


@dataclass(frozen=True)
class Policy:
    """The thread policy in force, as recorded in the manifest."""

    threads: int | None  # torch's intra-op threads (None: torch not loaded yet, its own count)
    source: str  # who chose the count: OMP_NUM_THREADS, IVX_THREADS, config, auto or off
    wait_policy: str | None  # OMP_WAIT_POLICY the OpenMP runtime started with (None: its default)
    wait_source: str  # OMP_WAIT_POLICY (the caller's), ivx, off, or why it could not be set
    cores: int  # cores this process may run on

    def record(self) -> dict[str, object]:
        """The manifest's `threads` entry."""
        return asdict(self)


def cores() -> int:
    """Cores this process may run on (its CPU affinity, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def parse(value: str | int | None, where: str) -> int | str | None:
    """A thread setting → a count ≥ 1, "auto", "off" or None (unset); ThreadsError names `where`."""
    if value is None or value == "":
        return None
    text = str(value).strip().lower()
    if text in ("auto", "off"):
        return text
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise ThreadsError(f"{where} {value!r} must be a number of threads ≥ 1, 'auto' or 'off'")


def _caller(name: str) -> str | None:
    """An environment variable the caller set (one ivx set itself does not count)."""
    return None if name in _SET_BY_IVX else os.environ.get(name) or None


def _set(name: str, value: str) -> None:
    os.environ[name] = value
    _SET_BY_IVX.add(name)


def _count(setting: int | str | None) -> tuple[int | None, str]:
    """(the count to set, None to leave torch's own; who chose) from the environment, then
    `setting`, then auto."""
    env = parse(os.environ.get(ENV), ENV)  # checked even when OMP_NUM_THREADS wins: a typo is an error
    if _caller("OMP_NUM_THREADS") is not None:
        return None, "OMP_NUM_THREADS"  # torch reads it itself
    if env is not None and env != "auto":
        return (None, "off") if env == "off" else (int(env), ENV)
    if setting is not None and setting != "auto":
        return (None, "off") if setting == "off" else (int(setting), "config")
    return (_BEFORE[0] if _BEFORE else None), "auto"  # torch's own count (back to it after a set one)


def configure(setting: int | str | None = None) -> Policy:
    """Choose the thread count and wait policy; call before `import torch` for the wait policy.

    `setting` is the config's `threads:` (None or "auto": torch's own count). Safe to call again:
    a later call only changes the count (torch.set_num_threads), as the runtime allows.
    """
    threads, source = _count(setting)
    wait, wait_source = _wait(source == "off")
    if threads is not None:
        if "torch" in sys.modules:
            import torch

            if not _BEFORE:
                _BEFORE.append(int(torch.get_num_threads()))
            torch.set_num_threads(threads)
        else:
            _set("OMP_NUM_THREADS", str(threads))
    return Policy(_torch_threads() or threads, source, wait, wait_source, cores())


def _wait(off: bool) -> tuple[str | None, str]:
    """(the wait policy, who set it); set now unless the caller did, ivx is off, or it is too late."""
    user = _caller("OMP_WAIT_POLICY")
    if user is not None:
        return user, "OMP_WAIT_POLICY"
    if "OMP_WAIT_POLICY" in _SET_BY_IVX:
        return os.environ["OMP_WAIT_POLICY"], "ivx"
    if off:
        return None, "off"
    if "torch" in sys.modules:
        return None, "not set: torch was imported before ivx (set OMP_WAIT_POLICY=PASSIVE before it)"
    _set("OMP_WAIT_POLICY", WAIT)
    return WAIT, "ivx"


def _torch_threads() -> int | None:
    """torch's thread count when it is loaded (None before)."""
    if "torch" not in sys.modules:
        return None
    import torch

    return int(torch.get_num_threads())
