"""The run directory: timestamped, never overwritten, written atomically, resumable.

```
runs/<UTC yyyymmdd-HHMMSS>_<name>/
  config.yaml  resolved.yaml  manifest.json  plan.jsonl  results.jsonl  results.csv
  summary.json  tensors.safetensors  plots/*.png
```
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import ivx


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


def write_text(path: Path, text: str) -> None:
    """Write a file atomically (temp file + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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
            cwd=Path(ivx.__file__).parent,
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

    return {"ivx": ivx.__version__, "torch": torch.__version__, "transformers": transformers.__version__}


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
        """Load an existing manifest."""
        return cls(run_dir, json.loads((run_dir / "manifest.json").read_text()))

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

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Append rows and flush to disk."""
        with self.path.open("a") as fh:
            for row in rows:
                fh.write(json.dumps(_jsonable(row)) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def write_csv(self, rows: list[dict[str, Any]]) -> None:
        """results.csv: flat rows; list-valued columns are JSON-encoded."""
        keys: list[str] = []
        for row in rows:
            for key in row:
                if key not in keys:
                    keys.append(key)
        tmp = self.path.with_name("results.csv.tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            for row in rows:
                writer.writerow(
                    {k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in row.items()}
                )
        os.replace(tmp, self.path.with_name("results.csv"))
