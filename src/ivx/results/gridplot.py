"""Figures of a run's summary grid for every sweep shape, one per metric.

A 1-D sweep is a line (numeric axis) or bar chart (named values) of the mean with standard-error
bars; a 2-D sweep a heatmap (layer × head with heads across — the IOI head figure; position or
component × layer with layers across — the ROME look); further axes become side-by-side panels
sharing one colour scale. Colour scales are honest: signed effects are diverging and centred on
0, normalized metrics and probabilities span 0..1 (widened only if the data leave it), and
colour-bar ticks never use an offset. Functions return the matplotlib Figure so tests can read
back the arrays, labels and norms they draw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ivx.results import tables as report

SIGNED = frozenset({"indirect_effect", "logit_diff"})
UNIT = frozenset(
    {"logit_diff_norm", "indirect_effect_norm", "target_prob", "p_clean", "p_corrupted", "iia", "control_iia"}
)


def norm_for(metric: str, values: list[float]) -> tuple[Any, str]:
    """(matplotlib norm, colormap name) for a metric's values."""
    from matplotlib.colors import Normalize

    finite = [v for v in values if v == v]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if metric in SIGNED:
        lim = max(abs(lo), abs(hi)) or 1.0
        return Normalize(-lim, lim), "RdBu_r"
    if metric in UNIT:
        if lo < 0:  # a signed normalized effect: diverging, centred on 0, at least -1..1
            lim = max(1.0, hi, -lo)
            return Normalize(-lim, lim), "RdBu_r"
        return Normalize(0.0, max(1.0, hi)), "Purples"
    if hi <= lo:
        hi = lo + 1.0
    return Normalize(lo, hi), "viridis"


def colorbar(fig: Any, image: Any, ax: Any, metric: str) -> Any:
    """A colour bar with plain tick labels (no `+1` offset)."""
    from matplotlib.ticker import ScalarFormatter

    bar = fig.colorbar(image, ax=ax, shrink=0.9)
    formatter = ScalarFormatter(useOffset=False)
    bar.ax.yaxis.set_major_formatter(formatter)
    bar.set_label(metric, fontsize=8)
    return bar


def _number(value: Any, missing: float) -> float:
    """A summary value as a float (summary.json stores NaN as null)."""
    return float(value) if isinstance(value, int | float) else missing


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def line_figure(summary: dict[str, Any], axis: str, metric: str) -> Any:
    """Mean ± standard error of one metric along a 1-D sweep, values in config order."""
    plt = pyplot()
    grid = summary["grid"]
    values = report.ordered_values(grid, axis)
    entries = [next(e for e in grid if e.get(axis) == v) for v in values]
    means = [_number(e.get(metric), float("nan")) for e in entries]
    errs = [_number(e.get(f"{metric}_stderr"), 0.0) for e in entries]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(values) + 2), 3.2), constrained_layout=True)
    xs = list(range(len(values)))
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        ax.errorbar(xs, means, yerr=errs, marker="o", ms=4, capsize=3)
    else:
        ax.bar(xs, means, yerr=errs, capsize=3, color="#7b68ae")
    ax.set_xticks(xs, [report.label(v) for v in values], rotation=45 if len(values) > 8 else 0)
    ax.set_xlabel(axis)
    n = max((e.get("n", 0) for e in entries), default=0)
    ax.set_ylabel(f"{metric} (mean ± s.e., n={n})")
    if metric in UNIT:
        low = min(m - e for m, e in zip(means, errs, strict=True))
        ax.set_ylim(min(0.0, low), max(1.0, max(means) + max(errs)))
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_title(f"{summary.get('name', '')}: {metric} by {axis}", fontsize=10)
    return fig


def heatmap_figure(summary: dict[str, Any], axes: list[str], metric: str) -> Any:
    """One heatmap per value of the panel axes (row × column from report.matrix_axes)."""
    plt = pyplot()
    grid = summary["grid"]
    row, col, extra = report.matrix_axes(axes)
    combos = report.panels(grid, extra)
    slices = [report.matrix(grid, row, col, fixed, metric) for fixed in combos]
    norm, cmap = norm_for(metric, [v for _, _, data in slices for line in data for v in line])
    rows, cols = slices[0][0], slices[0][1]
    width = max(5.5, (0.45 * len(cols) + 1.8) * len(combos) + 1.0)
    height = 0.32 * len(rows) + 1.8
    fig, grid_axes = plt.subplots(
        1, len(combos), figsize=(width, height), squeeze=False, constrained_layout=True
    )
    for ax, fixed, (_, _, data) in zip(grid_axes[0], combos, slices, strict=True):
        image = ax.imshow(data, aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
        ax.set_xticks(range(len(cols)), [report.label(c) for c in cols], fontsize=8)
        ax.set_yticks(range(len(rows)), [report.label(r) for r in rows], fontsize=8)
        ax.set_xlabel(col)
        ax.set_ylabel(row)
        ax.set_title(", ".join(f"{k}={report.label(v)}" for k, v in fixed.items()) or metric, fontsize=9)
    colorbar(fig, image, list(grid_axes[0]), metric)
    n = max((e.get("n", 0) for e in grid), default=0)
    fig.suptitle(f"{summary.get('name', '')}: mean {metric} over {n} prompts", fontsize=10)
    return fig


def figure(summary: dict[str, Any], metric: str) -> Any | None:
    """The figure of one metric for the run's sweep shape (None for a single point)."""
    grid = summary.get("grid") or []
    axes = [a for a in summary.get("axes", []) if len(report.ordered_values(grid, a)) > 1]
    if not grid or not axes or not any(metric in e for e in grid):
        return None
    if len(axes) == 1:
        return line_figure(summary, axes[0], metric)
    return heatmap_figure(summary, axes, metric)


def write(run_dir: Path, summary: dict[str, Any]) -> list[Path]:
    """Write sweep_<metric>.png for every metric the run computed; return the paths."""
    trace = summary.get("trace")
    if trace and any("by_position" not in c for c in trace["components"].values()):
        return []  # prompts of different lengths: absolute positions mean different tokens
    plt = pyplot()
    written = []
    for metric in summary.get("metrics", []):
        fig = figure(summary, metric)
        if fig is None:
            continue
        (run_dir / "plots").mkdir(exist_ok=True)
        path = run_dir / "plots" / f"sweep_{metric}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
