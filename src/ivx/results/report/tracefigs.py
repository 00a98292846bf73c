"""The report's figures beyond the summary grid: the causal-trace panels (token category or
position × layer per component, ROME's colours), attribution's verification scatter, DAS's
held-out IIA per site × layer beside its controls, and the controls' spreads beside the real run's."""

from __future__ import annotations

from typing import Any

from ivx.results import plots
from ivx.results import tables as report
from ivx.results.report.panels import FAMILIES, colour, fmt, heatmaps


def trace_figures(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Causal-trace panels for every corruption variant's trace."""
    traces = summary.get("traces") or ({None: summary["trace"]} if summary.get("trace") else {})
    out = []
    for label, trace in traces.items():
        tag = f" ({label} corruption)" if label else ""
        name = f"{summary.get('name', '')}{tag}"
        if trace.get("has_subject", True):
            out.append(_trace(trace, name, "by_category", label))
        if all("by_position" in c for c in trace["components"].values()):
            out.append(_trace(trace, name, "by_position", label))
    return out


def _trace(trace: dict[str, Any], name: str, kind: str, label: str | None) -> dict[str, Any]:
    """Heatmap panels of one trace, token category (or position) × layer per component."""
    metric, n_layers, comps = trace["metric"], trace["n_layers"], list(trace["components"])
    layers = [str(i) for i in range(n_layers)]
    if kind == "by_category":
        cats = [c for c in plots.CATEGORY_LABELS if any(c in trace["components"][k][kind] for k in comps)]
        cats += [c for k in comps for c in trace["components"][k][kind] if c not in cats]
        rows = [plots.CATEGORY_LABELS.get(c, c) for c in cats]
    else:
        first = trace["components"][comps[0]]["by_position"]
        rows = [f"{i} {t}" for i, t in enumerate(first.get("labels") or first.get("tokens") or [])]
        rows = rows or [str(i) for i in range(len(first["mean"]))]
    panels: list[dict[str, Any]] = []
    values: list[float] = []
    for comp in comps:
        mean, err, counts = _matrices(trace, comp, kind, cats if kind == "by_category" else None)
        values += [v for line in mean for v in line if isinstance(v, int | float)]
        text = [
            [
                f"{comp}<br>{rows[r]}, layer {c}<br>{metric}: {fmt(mean[r][c])}<br>"
                f"s.e.: {fmt(err[r][c])}   n={counts[r][c]}"
                for c in range(n_layers)
            ]
            for r in range(len(rows))
        ]
        panels.append(
            {
                "name": plots.panel_title(comp).replace("\n", ", "),
                "z": mean,
                "text": text,
                "family": plots.site_cmap(comp),
            }
        )
    axis = colour(metric, values)
    if axis["cmin"] >= 0:  # ROME's colour per kind of site, white at zero
        for p in panels:
            p["colorscale"] = FAMILIES[p["family"]]
    data, layout = heatmaps(panels, layers, rows, ("layer", "token" if kind == "by_position" else ""), axis)
    what = "token category" if kind == "by_category" else "token position"
    return {
        "id": f"trace-{kind}-{label or 'main'}",
        "section": "trace",
        "title": f"{name}: average {metric} of restoring one clean state into the corrupted run, "
        f"by {what} × layer ({trace['facts']} prompts; p(clean)={fmt(trace.get('p_clean'))}, "
        f"p(corrupted)={fmt(trace.get('p_corrupted'))})",
        "click": None,
        "data": data,
        "layout": layout,
    }


def _matrices(
    trace: dict[str, Any], comp: str, kind: str, cats: list[str] | None
) -> tuple[list[list[Any]], list[list[Any]], list[list[Any]]]:
    """(mean, stderr, n) as [row][layer] for one component."""
    entry = trace["components"][comp][kind]
    n_layers = trace["n_layers"]
    if cats is not None:
        blank = {"mean": [None] * n_layers, "stderr": [None] * n_layers, "n": [0] * n_layers}
        stats = [entry.get(c, blank) for c in cats]
        return [s["mean"] for s in stats], [s["stderr"] for s in stats], [s["n"] for s in stats]
    counts = [[trace["facts"]] * n_layers for _ in entry["mean"]]
    return entry["mean"], entry["stderr"], counts


def extra_figures(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Attribution's verification, DAS IIA with controls, and the controls' spreads."""
    out: list[dict[str, Any] | None] = []
    verification = summary.get("attribution_verification")
    if isinstance(verification, dict) and verification.get("verified"):
        out.append(verification_figure(verification))
    if summary.get("points"):
        out += [iia_heatmap(summary), iia_figure(summary)]
    if summary.get("controls"):
        out.append(controls_figure(summary))
    return [f for f in out if f is not None]


def verification_figure(verification: dict[str, Any]) -> dict[str, Any]:
    """Estimate vs exact for the re-checked cells, with the diagonal and the correlations."""
    pairs = verification["verified"]
    xs = [p.get("exact") for p in pairs]
    ys = [p.get("estimate") for p in pairs]
    finite = [v for v in xs + ys if isinstance(v, int | float)] or [0.0, 1.0]
    lo, hi = min(finite), max(finite)
    metric = verification.get("ranked_by", "")
    stats = (verification.get("metrics") or {}).get(metric, {})
    text = [
        f"cell {p.get('cell')}<br>exact: {fmt(p.get('exact'))}<br>estimate: {fmt(p.get('estimate'))}"
        for p in pairs
    ]
    return {
        "id": "verification",
        "section": "verification",
        "title": f"attribution estimate vs exact patching of {len(pairs)} cells ({metric}): "
        f"Pearson {fmt(stats.get('pearson'))}, Spearman {fmt(stats.get('spearman'))}, "
        f"top-k overlap {fmt(stats.get('top_k_overlap'))}",
        "click": None,
        "data": [
            {
                "type": "scatter",
                "mode": "markers",
                "x": xs,
                "y": ys,
                "hovertext": text,
                "hoverinfo": "text",
                "name": "cells",
            },
            {
                "type": "scatter",
                "mode": "lines",
                "x": [lo, hi],
                "y": [lo, hi],
                "name": "estimate = exact",
                "line": {"dash": "dot", "color": "grey"},
                "hoverinfo": "skip",
            },
        ],
        "layout": {
            "height": 420,
            "xaxis": {"title": {"text": f"exact {metric}"}},
            "yaxis": {"title": {"text": f"estimated {metric}"}},
        },
    }


def iia_figure(summary: dict[str, Any]) -> dict[str, Any]:
    """Held-out IIA per trained point (site × layer), beside each control's IIA."""
    points = summary["points"]
    axes = [a for a in summary.get("axes", []) if len({report.label(p.get(a)) for p in points}) > 1]
    labels = [", ".join(f"{a}={report.label(p.get(a))}" for a in axes) or "site" for p in points]
    data = []
    for name, key in _SERIES.items():
        if not any(isinstance(p.get(key), int | float) for p in points):
            continue
        text = [f"{lab}<br>{name}: {fmt(p.get(key))}" for lab, p in zip(labels, points, strict=True)]
        data.append(
            {
                "type": "bar",
                "name": name,
                "x": labels,
                "y": [p.get(key) for p in points],
                "hovertext": text,
                "hoverinfo": "text",
            }
        )
    return {
        "id": "das-iia",
        "section": "das",
        "title": f"DAS: held-out IIA of {len(points)} trained points beside the controls "
        f"(best: point {summary.get('best_point')}, IIA {fmt(summary.get('best_iia'))})",
        "click": None,
        "data": data,
        "layout": {
            "barmode": "group",
            "height": 420,
            "yaxis": {"title": {"text": "IIA"}, "range": [0, 1.05]},
            "xaxis": {"type": "category"},
        },
    }


_SERIES = {
    "real (held-out IIA)": "iia",
    "placebo (random basis)": "control_iia",
    "shuffled labels": "shuffled_labels_iia",
    "random init": "random_init_iia",
}


def iia_heatmap(summary: dict[str, Any]) -> dict[str, Any] | None:
    """Held-out IIA per site × layer, one panel for the real run and one per control (0..1)."""
    points = summary["points"]
    axes = [a for a in summary.get("axes", []) if len(report.ordered_values(points, a)) > 1]
    if len(axes) < 2:
        return None
    row, col, extra = report.matrix_axes(axes)
    panels = []
    for name, key in _SERIES.items():
        if not any(isinstance(p.get(key), int | float) for p in points):
            continue
        for fixed in report.panels(points, extra):
            rows, cols, z = report.matrix(points, row, col, fixed, key)
            text = [
                [
                    f"{name}<br>{row}={report.label(r)}, {col}={report.label(c)}<br>IIA: {fmt(v)}"
                    for c, v in zip(cols, line, strict=True)
                ]
                for r, line in zip(rows, z, strict=True)
            ]
            label = ", ".join(f"{a}={report.label(v)}" for a, v in fixed.items())
            panels.append({"name": f"{name}{', ' + label if label else ''}", "z": z, "text": text})
    x = [report.label(c) for c in report.ordered_values(points, col)]
    y = [report.label(r) for r in report.ordered_values(points, row)]
    data, layout = heatmaps(panels, x, y, (col, row), colour("iia", [0.0, 1.0]))
    return {
        "id": "das-iia-grid",
        "section": "das",
        "title": f"DAS: held-out IIA per {row} × {col}, the real subspace beside each control (0..1)",
        "click": None,
        "data": data,
        "layout": layout,
    }


def controls_figure(summary: dict[str, Any]) -> dict[str, Any]:
    """The spread (max − min over the grid) of the real run's effect beside each control's."""
    controls = summary["controls"]
    first = next(iter(controls.values()))
    names = ["real", *controls]
    values = [first.get("real_spread"), *(c.get("spread") for c in controls.values())]
    text = [f"{n}: spread {fmt(v)}" for n, v in zip(names, values, strict=True)]
    return {
        "id": "controls",
        "section": "controls",
        "title": f"spread of mean {first.get('metric')} over the grid: real run vs controls",
        "click": None,
        "data": [{"type": "bar", "x": names, "y": values, "hovertext": text, "hoverinfo": "text"}],
        "layout": {"height": 340, "yaxis": {"title": {"text": "max − min over the grid"}}},
    }
