"""The run directory: timestamped, never overwritten, written atomically, resumable.

```
runs/<UTC yyyymmdd-HHMMSS>_<name>/
  config.yaml  resolved.yaml  manifest.json  plan.jsonl  results.jsonl  results.csv
  summary.json  tensors.safetensors  plots/*.png
```
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import json
import math
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ivx.core.errors import UserError
from ivx.core.version import VERSION


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def create(root: str | Path, name: str) -> Path:
    """Make a new `<root>/<UTC stamp>_<name>` directory (suffix `-2`, `-3`, ... on collision)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "run"
    stem = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S") + "_" + safe
    for attempt in range(1, 1000):
        path = root / (stem if attempt == 1 else f"{stem}-{attempt}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a run directory under {root}")


class RunDirError(UserError):
    """A run directory that cannot be used: not a run, a garbled manifest, or held by another process."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM (or SIGINT) arrived: unwind so the manifest is marked failed."""


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises `Interrupted`, so a run unwinds and marks itself failed."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def write_bytes(path: Path, data: bytes) -> None:
    """Write a file atomically: temp file, fsync, rename, fsync of the directory."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically (temp file + fsync + rename)."""
    write_bytes(path, text.encode())


def save_tensors(tensors: dict[str, Any], path: Path) -> None:
    """Write a safetensors file atomically (a kill never leaves a torn one)."""
    from safetensors.torch import save

    write_bytes(path, save(tensors))


def tensor_keys(path: Path) -> set[str] | None:
    """The tensor names of a safetensors file, or None when it is missing, torn or not safetensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return set(fh.keys())
    except Exception:  # noqa: BLE001 - any unreadable file counts as torn
        return None


def valid_tensor_keys(parts: Path, merged: Path) -> set[str]:
    """Tensor names in readable part files and the merged file; torn parts and temp files go."""
    keys = tensor_keys(merged) or set() if merged.exists() else set()
    if parts.is_dir():
        for tmp in parts.glob("*.tmp"):
            tmp.unlink()
        for part in sorted(parts.glob("part-*.safetensors")):
            found = tensor_keys(part)
            if found is None:
                part.unlink()  # torn: its cells are recomputed
            else:
                keys |= found
    return keys


class Lock:
    """An exclusive `flock` on `<run_dir>/.lock`, held for a whole run: one writer per run dir."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self.fd: int | None = None

    def __enter__(self) -> Lock:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunDirError(
                f"{self.path.parent} is in use by another ivx process (pid {holder}); "
                "wait for it to finish or stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the lock
            self.fd = None


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def write_json(path: Path, data: Any) -> None:
    """Atomic JSON write (NaN/inf become null)."""
    write_text(path, json.dumps(_jsonable(data), indent=2) + "\n")


def git_sha() -> str | None:
    """The ivx source checkout's commit, if ivx runs from a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def versions() -> dict[str, str]:
    """Versions of ivx and the libraries that decide the numbers."""
    import torch
    import transformers

    return {"ivx": VERSION, "torch": torch.__version__, "transformers": transformers.__version__}


class Manifest:
    """manifest.json: what ran, on what, and whether it finished (running → complete | failed)."""

    def __init__(self, run_dir: Path, data: dict[str, Any]) -> None:
        self.path = run_dir / "manifest.json"
        self.data = data

    @classmethod
    def start(cls, run_dir: Path, **fields: Any) -> Manifest:
        """Write a `running` manifest."""
        data = {
            "status": "running",
            **versions(),
            "git_sha": git_sha(),
            "started": _now(),
            "finished": None,
            **fields,
        }
        manifest = cls(run_dir, data)
        manifest.save()
        return manifest

    @classmethod
    def read(cls, run_dir: Path) -> Manifest:
        """Load an existing manifest; RunDirError when it is missing or not a manifest."""
        path = run_dir / "manifest.json"
        if not path.is_file():
            raise RunDirError(f"{run_dir} is not an ivx run directory (no manifest.json)")
        try:
            data = json.loads(path.read_bytes().decode())
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise RunDirError(f"{path} is not valid JSON ({exc}); this run cannot be resumed") from None
        if not isinstance(data, dict) or not isinstance(data.get("status"), str):
            raise RunDirError(f"{path} is not an ivx manifest (no status); this run cannot be resumed")
        return cls(run_dir, data)

    def update(self, **fields: Any) -> None:
        """Set fields and save."""
        self.data.update(fields)
        self.save()

    def finish(self, status: str, **fields: Any) -> None:
        """Mark complete or failed."""
        self.update(status=status, finished=_now(), **fields)

    def save(self) -> None:
        """Atomic write."""
        write_json(self.path, self.data)

    def fail(self, exc: BaseException, seconds: float, noop: int) -> None:
        """Mark the run failed (best effort: on a full disk even the manifest may not fit)."""
        with contextlib.suppress(OSError):
            self.finish(
                "failed", error=f"{type(exc).__name__}: {exc}", seconds=round(seconds, 3), cells_noop=noop
            )


class Results:
    """results.jsonl, appended batch by batch (so an interrupted run keeps what it computed)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "results.jsonl"

    def done_cells(self) -> set[int]:
        """Cells already written (for --resume); a torn last line is ignored."""
        done: set[int] = set()
        if not self.path.exists():
            return done
        for line in self.path.read_text().splitlines():
            try:
                done.add(int(json.loads(line)["cell"]))
            except (ValueError, KeyError, json.JSONDecodeError):
                continue
        return done

    def rows(self) -> list[dict[str, Any]]:
        """All complete rows, ordered by cell."""
        rows: dict[int, dict[str, Any]] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                rows[int(row["cell"])] = row
        return [rows[k] for k in sorted(rows)]

    def repair(self) -> None:
        """Drop a torn trailing line left by a crash, so appends start on a fresh line."""
        if not self.path.exists():
            return
        text = self.path.read_text()
        if text and not text.endswith("\n"):
            write_text(self.path, text[: text.rfind("\n") + 1])

    def verified(self, done: set[int], parts: Path, logits: str) -> set[int]:
        """Done cells whose logits survive in a readable part or the merged file; the rest rerun."""
        if logits == "none":
            return done
        keys = valid_tensor_keys(parts, parts.parent / "tensors.safetensors")
        kept = {c for c in done if f"cell{c}" in keys}
        if kept != done:
            self.keep(kept)
        return kept

    def keep(self, cells: set[int]) -> None:
        """Rewrite the file with only these cells' rows (others are recomputed on resume)."""
        rows = [row for row in self.rows() if int(row["cell"]) in cells]
        write_text(self.path, "".join(json.dumps(_jsonable(row)) + "\n" for row in rows))

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Append one batch's rows in a single write, fsynced; all or nothing.

        A resume then finds whole batches done, a prefix of the run's batch sequence, so the
        cells left are batched exactly as an uninterrupted run batches them (same numbers).
        """
        data = "".join(json.dumps(_jsonable(row)) + "\n" for row in rows).encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)  # e.g. a full disk wrote half the batch: drop all of it
                raise
        finally:
            os.close(fd)

    def write_csv(self, rows: list[dict[str, Any]]) -> None:
        """results.csv: flat rows; list-valued columns are JSON-encoded."""
        keys: list[str] = []
        for row in rows:
            for key in row:
                if key not in keys:
                    keys.append(key)
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=keys)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in row.items()})
        write_text(self.path.with_name("results.csv"), buffer.getvalue())
