"""Run directories as a collection: `ivx ls`, `ivx show RUN`, `ivx compare RUN_A RUN_B`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ivx.core.errors import UserError
from ivx.results import tables as report


class CompareError(UserError):
    """Two runs that cannot be compared point by point."""


def _point(entry: dict[str, Any], axes: list[str]) -> str:
    return ", ".join(f"{a}={report.label(entry.get(a))}" for a in axes)


def check_comparable(a: dict[str, Any], b: dict[str, Any], name_a: str = "A", name_b: str = "B") -> None:
    """Raise CompareError unless A and B sweep the same axes over the same grid points and share a
    metric (comparing anything else prints numbers that mean nothing)."""
    axes_a, axes_b = list(a.get("axes", [])), list(b.get("axes", []))
    if sorted(axes_a) != sorted(axes_b):
        raise CompareError(
            f"cannot compare {name_a} and {name_b}: their grids differ ({name_a} sweeps "
            f"{axes_a or 'nothing'}, {name_b} sweeps {axes_b or 'nothing'})"
        )
    points_a = {json.dumps([e.get(x) for x in axes_a]): e for e in a.get("grid", [])}
    points_b = {json.dumps([e.get(x) for x in axes_a]) for e in b.get("grid", [])}
    only_a = [e for k, e in points_a.items() if k not in points_b]
    only_b = len(points_b - set(points_a))
    if only_a or only_b:
        example = f" (e.g. {_point(only_a[0], axes_a)} is only in {name_a})" if only_a else ""
        raise CompareError(
            f"cannot compare {name_a} and {name_b}: their grids differ: {len(only_a)} of {name_a}'s "
            f"{len(points_a)} points are not in {name_b}, {only_b} of {name_b}'s are not in {name_a}{example}"
        )
    if not [m for m in a.get("metrics", []) if m in b.get("metrics", [])]:
        raise CompareError(
            f"cannot compare {name_a} and {name_b}: no metric in common ({name_a}: {a.get('metrics')}, "
            f"{name_b}: {b.get('metrics')})"
        )


def difference(a: dict[str, Any], b: dict[str, Any], metric: str) -> list[dict[str, Any]]:
    """A's grid with `metric` = B − A per point and its standard error sqrt(se_A² + se_B²)."""
    axes = list(a.get("axes", []))
    index = {json.dumps([e.get(x) for x in axes]): e for e in b.get("grid", [])}
    out = []
    for entry in a.get("grid", []):
        other = index.get(json.dumps([entry.get(x) for x in axes]), {})
        va, vb = entry.get(metric), other.get(metric)
        ea, eb = entry.get(f"{metric}_stderr") or 0.0, other.get(f"{metric}_stderr") or 0.0
        both = isinstance(va, int | float) and isinstance(vb, int | float)
        point = {x: entry.get(x) for x in axes}
        point.update({"n": min(entry.get("n", 0), other.get("n", 0))})
        point[metric] = vb - va if both else None  # type: ignore[operator]
        point[f"{metric}_stderr"] = math.sqrt(ea**2 + eb**2) if both else None
        out.append(point)
    return out


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


def resolve(path: Path, root: Path) -> Path | None:
    """A run directory from what a user typed: the directory itself, its name under `root` (what
    `ivx ls` prints), or an experiment name (its newest run); None when nothing matches."""
    for candidate in (path, root / path):
        if (candidate / "manifest.json").is_file():
            return candidate
    named = [row["run"] for row in listing(root) if row["name"] == str(path)] if root.is_dir() else []
    return root / sorted(named)[-1] if named else None


def compare(a: dict[str, Any], b: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(header, rows): every shared metric at every grid point of A, with B's value and B − A
    (CompareError when the grids differ)."""
    check_comparable(a, b)
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
