"""The report's interactive figures of a run's summary grid, as plotly JSON (no plotly import: the page
draws them with plotly.js): the same shapes as the PNGs (a line or bar with error bars for a 1-D
sweep, heatmap panels that wrap for ≥2-D), token labels on position axes, and a hover with the mean,
its standard error, n and the tokens of the first prompts. Each point's `customdata` is its index in
the summary grid, which the page's drill-down reads."""

from __future__ import annotations

import html
from typing import Any

from ivx.plan.positions import PositionError, resolve
from ivx.results import gridplot
from ivx.results import tables as report
from ivx.results.report import tracefigs
from ivx.results.report.panels import colour, fmt, heatmaps

HOVER_PROMPTS = 3  # prompts whose tokens a hover lists


def all_figures(
    summary: dict[str, Any], prompts: list[dict[str, Any]], position_axis: str | None = None, what: str = ""
) -> list:
    """Every figure of a run: per metric its sweep figure, then traces, DAS IIA, verification, controls."""
    out = []
    for metric in summary.get("metrics", []):
        fig = grid_figure(summary, metric, prompts, position_axis)
        if fig is not None:
            out.append({**fig, "title": fig["title"] + (f" — {what}" if what else "")})
    for name, entry in (summary.get("controls") or {}).items():  # each control's grid beside the real one
        if entry.get("metric") and entry.get("grid"):
            ctrl = {**summary, "grid": entry["grid"], "name": f"{summary.get('name', '')} ({name} control)"}
            fig = grid_figure(ctrl, entry["metric"], prompts, position_axis)
            if fig is not None:
                out.append({**fig, "id": f"control-{name}", "section": "controls", "click": None})
    out += tracefigs.trace_figures(summary)
    out += tracefigs.extra_figures(summary)
    return out


def _tokens_at(spec: Any, prompts: list[dict[str, Any]]) -> str:
    """The tokens a position spec picks in the first prompts (`' Amy' | ' Fred'`)."""
    picked = []
    for p in prompts[:HOVER_PROMPTS]:
        tokens = p.get("tokens") or []
        span = tuple(p["subject_span"]) if p.get("subject_span") else None
        try:
            where = resolve(spec, len(tokens), span)  # type: ignore[arg-type]
        except (PositionError, ValueError, TypeError, KeyError):
            return ""
        picked.append("".join(repr(tokens[i]) for i in where if 0 <= i < len(tokens)))
    return html.escape(" | ".join(picked), quote=False)  # plotly reads hover text as HTML


def axis_labels(
    values: list[Any], axis: str, prompts: list[dict[str, Any]], position_axis: str | None
) -> list:
    """Tick labels: integer positions of equal-length prompts show their token (first prompt's)."""
    labels = [report.label(v) for v in values]
    if axis != position_axis or not prompts:
        return labels
    if len({len(p.get("tokens") or []) for p in prompts}) != 1:
        return labels
    tokens = prompts[0].get("tokens") or []
    out = []
    for value, text in zip(values, labels, strict=True):
        if isinstance(value, int) and not isinstance(value, bool) and -len(tokens) <= value < len(tokens):
            out.append(f"{text} {tokens[value].strip() or repr(tokens[value])}")
        else:
            out.append(text)
    return out


def hover(
    entry: dict[str, Any], metric: str, axes: list[str], prompts: list, position_axis: str | None
) -> str:
    """One grid point's hover: where it is, mean ± standard error, n, tokens of the first prompts."""
    where = ", ".join(f"{a}={report.label(entry.get(a))}" for a in axes)
    lines = [
        where,
        f"{metric}: {fmt(entry.get(metric))}",
        f"s.e.: {fmt(entry.get(f'{metric}_stderr'))}   n={entry.get('n', '-')}",
    ]
    if position_axis and position_axis in entry:
        tokens = _tokens_at(entry[position_axis], prompts)
        if tokens:
            lines.append(f"tokens: {tokens}")
    return "<br>".join(lines)


def grid_figure(
    summary: dict[str, Any], metric: str, prompts: list[dict[str, Any]], position_axis: str | None = None
) -> dict[str, Any] | None:
    """The figure of one metric for the run's sweep shape (None for a single point)."""
    grid = summary.get("grid") or []
    axes = [a for a in summary.get("axes", []) if len(report.ordered_values(grid, a)) > 1]
    if not grid or not axes or not any(metric in e for e in grid):
        return None
    if len(axes) == 1:
        return _line(summary, axes[0], metric, prompts, position_axis)
    return _heatmaps(summary, axes, metric, prompts, position_axis)


def _line(summary: dict[str, Any], axis: str, metric: str, prompts: list, position_axis: str | None) -> dict:
    grid = summary["grid"]
    values = report.ordered_values(grid, axis)
    index = [next(i for i, e in enumerate(grid) if e.get(axis) == v) for v in values]
    means = [grid[i].get(metric) for i in index]
    errs = [grid[i].get(f"{metric}_stderr") or 0.0 for i in index]
    numeric = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    trace = {
        "type": "scatter" if numeric else "bar",
        "x": axis_labels(values, axis, prompts, position_axis),
        "y": means,
        "error_y": {"type": "data", "array": errs, "visible": True},
        "customdata": index,
        "hovertext": [hover(grid[i], metric, [axis], prompts, position_axis) for i in index],
        "hoverinfo": "text",
        "name": metric,
    }
    if numeric:
        trace["mode"] = "lines+markers"
    n = max((e.get("n", 0) for e in grid), default=0)
    return {
        "id": f"grid-{metric}",
        "section": "results",
        "title": f"{summary.get('name', '')}: {metric} by {axis} (mean ± s.e. over {n} prompts)",
        "click": "grid",
        "data": [trace],
        "layout": {
            "xaxis": {"title": {"text": axis}, "type": "category"},
            "yaxis": {"title": {"text": f"{metric} (axis fitted to the data)"}, "zeroline": True},
            "height": 380,
        },
    }


def _heatmaps(
    summary: dict[str, Any], axes: list[str], metric: str, prompts: list, position_axis: str | None
) -> dict:
    grid = summary["grid"]
    row, col, extra = report.matrix_axes(axes)
    rows, cols = report.ordered_values(grid, row), report.ordered_values(grid, col)
    where = {_key(axes, e): i for i, e in enumerate(grid)}
    panels, values = [], []
    for fixed in report.panels(grid, extra):
        idx = [[where.get(_key(axes, {**fixed, row: r, col: c})) for c in cols] for r in rows]
        z = [[grid[i].get(metric) if i is not None else None for i in line] for line in idx]
        values += [v for line in z for v in line if isinstance(v, int | float)]
        text = [
            [hover(grid[i], metric, axes, prompts, position_axis) if i is not None else "" for i in line]
            for line in idx
        ]
        name = ", ".join(f"{a}={report.label(v)}" for a, v in fixed.items()) or metric
        panels.append({"name": name, "z": z, "text": text, "customdata": idx})
    centre = gridplot.baseline(summary, metric) if metric in gridplot.RAW else None
    x = axis_labels(cols, col, prompts, position_axis)
    y = axis_labels(rows, row, prompts, position_axis)
    data, layout = heatmaps(panels, x, y, (col, row), colour(metric, values, centre))
    n = max((e.get("n", 0) for e in grid), default=0)
    scale = f", colours centred on the corrupted run's {fmt(centre)}" if centre is not None else ""
    return {
        "id": f"grid-{metric}",
        "section": "results",
        "title": f"{summary.get('name', '')}: mean {metric} over {n} prompts{scale}",
        "click": "grid",
        "data": data,
        "layout": layout,
    }


def _key(axes: list[str], point: dict[str, Any]) -> tuple[str, ...]:
    return tuple(repr(point.get(a)) for a in axes)
