"""Terminal tables of a run's summary for every sweep shape, never truncated.

A run's `summary.json` holds one entry per grid point (mean, standard error and count over
prompts). This module lays that grid out as plain text: a single point as a metric list, a 1-D
sweep as one row per value (mean ± standard error), a 2-D sweep as a matrix (layer × head with
heads across, position/component × layer with layers across), and further axes as one matrix
per value. Axis values keep the config's order. Tables wider than the terminal (or than 100
columns when piped) are wrapped into column blocks, each repeating the row labels.
"""

from __future__ import annotations

import shutil
from typing import Any

from ivx.core import metrics

# metrics a table or figure shows first, most informative first: the metric table's order
PRIMARY: tuple[str, ...] = tuple(name for name, m in metrics.METRICS.items() if m.quantity is not None)


def primary_metric(metrics: list[str]) -> str | None:
    """The metric a matrix table shows: the most informative one that was computed."""
    for name in PRIMARY:
        if name in metrics:
            return name
    return metrics[0] if metrics else None


def ordered_values(grid: list[dict[str, Any]], axis: str) -> list[Any]:
    """The values of one axis in config order (order of first appearance in the grid)."""
    out: list[Any] = []
    for entry in grid:
        if entry.get(axis) not in out:
            out.append(entry.get(axis))
    return out


def matrix_axes(axes: list[str]) -> tuple[str, str, list[str]]:
    """(row axis, column axis, panel axes) of a ≥2-D sweep: heads or layers run across."""
    col = "head" if "head" in axes else "layer" if "layer" in axes else axes[-1]
    rest = [a for a in axes if a != col]
    preferred = [a for a in ("layer" if col == "head" else "", "position") if a in rest]
    row = preferred[0] if preferred else rest[0]
    return row, col, [a for a in rest if a != row]


def label(value: Any) -> str:
    """An axis value as text (lists joined with '+', None as 'none')."""
    if value is None:
        return "none"
    if isinstance(value, list):
        return "+".join(label(v) for v in value)
    return str(value)


def _fmt(value: Any) -> str:
    if not isinstance(value, int | float) or value != value:
        return "-"
    return f"{value:.3f}"


def wrap(header: list[str], rows: list[list[str]], width: int | None = None) -> str:
    """Right-aligned text columns; the first column repeats in each block that fits `width`."""
    width = width or shutil.get_terminal_size((100, 24)).columns
    cols = list(zip(header, *rows, strict=True))
    sizes = [max(len(c) for c in col) for col in cols]
    blocks: list[list[int]] = [[]]
    used = sizes[0]
    for j in range(1, len(cols)):
        if blocks[-1] and used + 2 + sizes[j] > width:
            blocks.append([])
            used = sizes[0]
        blocks[-1].append(j)
        used += 2 + sizes[j]
    out = []
    for block in blocks:
        for line in [header, *rows]:
            first = line[0].ljust(sizes[0])
            out.append(first + "".join("  " + line[j].rjust(sizes[j]) for j in block))
        out.append("")
    return "\n".join(out).rstrip("\n")


def _point_table(entry: dict[str, Any], metrics: list[str], width: int | None) -> str:
    rows = [
        [m, _fmt(entry.get(m)), _fmt(entry.get(f"{m}_stderr")), str(entry.get("n", ""))]
        for m in metrics
        if m in entry
    ]
    return wrap(["metric", "mean", "± stderr", "n"], rows, width)


def _line_table(grid: list[dict[str, Any]], axis: str, metrics: list[str], width: int | None) -> str:
    header = [axis] + [h for m in metrics for h in (m, "±")] + ["n"]
    rows = []
    for value in ordered_values(grid, axis):
        entry = next(e for e in grid if e.get(axis) == value)
        cells = [c for m in metrics for c in (_fmt(entry.get(m)), _fmt(entry.get(f"{m}_stderr")))]
        rows.append([label(value), *cells, str(entry.get("n", ""))])
    return wrap(header, rows, width)


def matrix(
    grid: list[dict[str, Any]], row: str, col: str, fixed: dict[str, Any], metric: str
) -> tuple[list[Any], list[Any], list[list[float]]]:
    """(row values, column values, means) of one metric on a row × column slice of the grid."""
    rows, cols = ordered_values(grid, row), ordered_values(grid, col)
    data = [[float("nan")] * len(cols) for _ in rows]
    for entry in grid:
        value = entry.get(metric)  # null in summary.json: NaN (e.g. a normalised metric, 0/0)
        if any(entry.get(k) != v for k, v in fixed.items()) or not isinstance(value, int | float):
            continue
        data[rows.index(entry.get(row))][cols.index(entry.get(col))] = float(value)
    return rows, cols, data


def panels(grid: list[dict[str, Any]], axes: list[str]) -> list[dict[str, Any]]:
    """Every combination of the panel axes' values, in config order."""
    import itertools

    combos = itertools.product(*(ordered_values(grid, a) for a in axes))
    return [dict(zip(axes, combo, strict=True)) for combo in combos]


def _matrix_tables(grid: list[dict[str, Any]], axes: list[str], metric: str, width: int | None) -> str:
    row, col, extra = matrix_axes(axes)
    n = max((e.get("n", 0) for e in grid), default=0)
    parts = []
    for fixed in panels(grid, extra):
        rows, cols, data = matrix(grid, row, col, fixed, metric)
        where = "".join(f", {k}={label(v)}" for k, v in fixed.items())
        parts.append(f"{metric} by {row} × {col}{where} (mean over {n} prompts)")
        header = [f"{row} \\ {col}"] + [label(c) for c in cols]
        body = [[label(r)] + [_fmt(v) for v in line] for r, line in zip(rows, data, strict=True)]
        parts.append(wrap(header, body, width))
        parts.append("")
    return "\n".join(parts).rstrip("\n")


def table(summary: dict[str, Any], width: int | None = None) -> str:
    """The compact terminal table of a run summary (any sweep shape)."""
    grid = summary.get("grid") or []
    metrics = [m for m in summary.get("metrics", []) if any(m in e for e in grid)]
    axes = [a for a in summary.get("axes", []) if len(ordered_values(grid, a)) > 1]
    if not grid or not metrics:
        return "(no metrics computed)"
    if not axes:
        return _point_table(grid[0], metrics, width)
    if len(axes) == 1:
        return _line_table(grid, axes[0], metrics, width)
    metric = primary_metric(metrics)
    assert metric is not None
    return _matrix_tables(grid, axes, metric, width)
