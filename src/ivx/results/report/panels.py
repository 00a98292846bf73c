"""Plotly building blocks shared by the report's figures: number format, heatmap panels in a grid
that wraps, and colour axes with the static figures' honest scales."""

from __future__ import annotations

import math
from typing import Any

from ivx.results import gridplot

PANEL_COLUMNS = 4  # panels per row before they wrap
# matplotlib's colour maps as plotly colour scales (low → high), so the page and the PNGs agree
FAMILIES: dict[str, list[list[Any]]] = {
    "Purples": [[0, "#fcfbfd"], [0.5, "#9e9ac8"], [1, "#3f007d"]],
    "Greens": [[0, "#f7fcf5"], [0.5, "#74c476"], [1, "#00441b"]],
    "Oranges": [[0, "#fff5eb"], [0.5, "#fd8d3c"], [1, "#7f2704"]],
    "Reds": [[0, "#fff5f0"], [0.5, "#fb6a4a"], [1, "#67000d"]],
    "RdBu_r": [[0, "#053061"], [0.25, "#4393c3"], [0.5, "#f7f7f7"], [0.75, "#d6604d"], [1, "#67001f"]],
}
_SCALES = {"diverging": FAMILIES["RdBu_r"], "unit": FAMILIES["Purples"], "sequential": "Viridis"}


def fmt(value: Any) -> str:
    """A number as the hover shows it (6 significant digits; '-' for a missing one)."""
    return f"{value:.6g}" if isinstance(value, int | float) and value == value else "-"


def colour(metric: str, values: list[float], centre: float | None = None) -> dict[str, Any]:
    """A plotly colour axis with the static figures' scale (gridplot.scale)."""
    lo, hi, kind = gridplot.scale(metric, values, centre)
    return {
        "cmin": lo,
        "cmax": hi,
        "colorscale": _SCALES[kind],
        "colorbar": {"title": {"text": metric, "side": "right"}},
    }


def layout_grid(n: int, rows_each: int) -> tuple[list[tuple[list[float], list[float]]], int]:
    """(x domain, y domain) per panel in a grid that wraps after PANEL_COLUMNS, and the height."""
    cols = min(PANEL_COLUMNS, max(1, n))
    lines = math.ceil(n / cols)
    panel_px = max(160, 18 * rows_each + 50)
    height = lines * (panel_px + 70) + 60
    gap_x, gap_y = 0.06, 70 / height
    out = []
    for k in range(n):
        r, c = divmod(k, cols)
        x0 = c / cols + (gap_x / 2 if c else 0.0)
        top = 1 - r / lines - gap_y / 2
        out.append(([x0, (c + 1) / cols - gap_x / 2], [max(0.0, 1 - (r + 1) / lines + gap_y / 2), top]))
    return out, height


def heatmaps(
    panels: list[dict[str, Any]], x: list[str], y: list[str], titles: tuple[str, str], coloraxis: dict
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(traces, layout) of heatmap panels sharing one colour scale; a panel is a dict with
    name, z [y][x], text [y][x], optional customdata [y][x] and optional colorscale."""
    domains, height = layout_grid(len(panels), len(y))
    data: list[dict[str, Any]] = []
    layout: dict[str, Any] = {"height": height, "annotations": [], "coloraxis": coloraxis}
    for k, panel in enumerate(panels):
        suffix = "" if k == 0 else str(k + 1)
        data.append(_heatmap(panel, suffix, x, y, coloraxis, last=k == len(panels) - 1))
        xd, yd = domains[k]
        first = k % PANEL_COLUMNS == 0
        layout[f"xaxis{suffix}"] = {
            "domain": xd,
            "anchor": f"y{suffix}",
            "type": "category",
            "title": {"text": titles[0]},
            "tickfont": {"size": 9},
        }
        layout[f"yaxis{suffix}"] = {
            "domain": yd,
            "anchor": f"x{suffix}",
            "type": "category",
            "autorange": "reversed",
            "tickfont": {"size": 9},
            "showticklabels": first,
            "title": {"text": titles[1] if first else ""},
        }
        layout["annotations"].append(
            {
                "text": panel["name"],
                "showarrow": False,
                "xref": "paper",
                "yref": "paper",
                "x": sum(xd) / 2,
                "y": yd[1],
                "yanchor": "bottom",
                "font": {"size": 9},
            }
        )
    return data, layout


def _heatmap(
    panel: dict[str, Any], suffix: str, x: list[str], y: list[str], coloraxis: dict, last: bool
) -> dict[str, Any]:
    """One panel's heatmap trace on axes x<suffix>, y<suffix>."""
    trace = {
        "type": "heatmap",
        "z": panel["z"],
        "x": x,
        "y": y,
        "hovertext": panel["text"],
        "hoverinfo": "text",
        "xaxis": f"x{suffix}",
        "yaxis": f"y{suffix}",
        "xgap": 1,
        "ygap": 1,
        "name": panel["name"],
    }
    if panel.get("customdata") is not None:
        trace["customdata"] = panel["customdata"]
    if panel.get("colorscale"):  # its own colour family, on the shared range
        trace.update(
            colorscale=panel["colorscale"],
            zmin=coloraxis["cmin"],
            zmax=coloraxis["cmax"],
            showscale=last,
            colorbar=coloraxis["colorbar"],
        )
    else:
        trace["coloraxis"] = "coloraxis"
    return trace
