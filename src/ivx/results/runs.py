"""Run directories as a collection: `ivx ls`, `ivx show RUN`, `ivx compare RUN_A RUN_B`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ivx.results import tables as report


def listing(root: Path) -> list[dict[str, Any]]:
    """One row per run directory under `root` (oldest first): name, status, cells, time, created."""
    out = []
    for manifest_file in sorted(root.glob("*/manifest.json")):
        manifest = json.loads(manifest_file.read_text())
        seconds = manifest.get("seconds")
        out.append(
            {
                "run": manifest_file.parent.name,
                "name": manifest.get("name", ""),
                "kind": manifest.get("kind", "run"),
                "status": manifest.get("status", "?"),
                "cells": manifest.get("cells_done", manifest.get("cells", "")),
                "wall time": f"{seconds:.1f} s" if isinstance(seconds, int | float) else "-",
                "created": str(manifest.get("started", ""))[:19].replace("T", " "),
            }
        )
    return out


def compare(a: dict[str, Any], b: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(header, rows): every shared metric at every grid point of A, with B's value and B − A."""
    axes = [x for x in a.get("axes", []) if x in b.get("axes", [])]
    metrics = [m for m in a.get("metrics", []) if m in b.get("metrics", [])]
    index = {json.dumps([e.get(x) for x in axes]): e for e in b.get("grid", [])}
    header = [*axes] + [h for m in metrics for h in (f"{m} A", f"{m} B", "Δ")]
    rows = []
    for entry in a.get("grid", []):
        other = index.get(json.dumps([entry.get(x) for x in axes]), {})
        cells = []
        for m in metrics:
            va, vb = entry.get(m), other.get(m)
            delta = f"{vb - va:+.3f}" if isinstance(va, int | float) and isinstance(vb, int | float) else "-"
            cells += [_num(va), _num(vb), delta]
        rows.append([report.label(entry.get(x)) for x in axes] + cells)
    return header or ["(single point)"], rows


def _num(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "-"
