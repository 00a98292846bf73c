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


# raw effects whose "nothing changed" value is the corrupted run's, not 0
RAW = frozenset({"logit_diff"})


def scale(metric: str, values: list[float], centre: float | None = None) -> tuple[float, float, str]:
    """(low, high, kind) of a metric's colour scale; kind is diverging, unit or sequential.

    Signed effects are diverging around `centre` (the corrupted baseline of a raw metric; else 0),
    normalized metrics and probabilities span 0..1 (widened only if the data leave it)."""
    finite = [v for v in values if isinstance(v, int | float) and v == v]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if metric in SIGNED:
        mid = centre if centre is not None and centre == centre else 0.0
        lim = max(abs(lo - mid), abs(hi - mid)) or 1.0
        return mid - lim, mid + lim, "diverging"
    if metric in UNIT:
        if lo < 0:  # a signed normalized effect: diverging, centred on 0, at least -1..1
            lim = max(1.0, hi, -lo)
            return -lim, lim, "diverging"
        return 0.0, max(1.0, hi), "unit"
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi, "sequential"


def norm_for(metric: str, values: list[float], centre: float | None = None) -> tuple[Any, str]:
    """(matplotlib norm, colormap name) for a metric's values (see `scale`)."""
    from matplotlib.colors import Normalize

    lo, hi, kind = scale(metric, values, centre)
    return Normalize(lo, hi), {"diverging": "RdBu_r", "unit": "Purples", "sequential": "viridis"}[kind]


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


def baseline(summary: dict[str, Any], metric: str) -> float | None:
    """The corrupted run's mean of a raw metric over the prompts: the value a patch that changes
    nothing leaves, so a raw effect's colours are centred on it (None when not recorded)."""
    values = [
        p["corrupted"][metric]
        for p in summary.get("prompts") or []
        if isinstance((p.get("corrupted") or {}).get(metric), int | float)
    ]
    return sum(values) / len(values) if values else None


def describe(interventions: list[dict[str, Any]], corrupted: bool = True) -> str:
    """What was patched and into what, for a figure title: `vanilla head_attention_value_output
    (layer $layer, head $head, position all) from the source run into mlp_input L0 at last`."""
    parts = []
    for iv in interventions:
        fields = [
            f"{k} {report.label(iv[k])}" for k in ("layer", "head", "position") if iv.get(k) is not None
        ]
        site = f"{iv.get('kind', '?')} {iv.get('component', 'block_output')} ({', '.join(fields)})"
        if iv.get("kind") not in ("vanilla", "interchange"):
            parts.append(site)
            continue
        source = {"source": "the source prompt's run", "base": "the clean run"}.get(
            str(iv.get("source")), "the clean run"
        )
        receivers = iv.get("receivers") or []
        if receivers:
            into = ", ".join(
                f"{r.get('component')} L{r.get('layer')}"
                + (f" head {report.label(r['head'])}" if r.get("head") is not None else "")
                + f" at {report.label(r.get('position', 'all'))}"
                for r in receivers
            )
        else:
            into = "the corrupted run" if corrupted else "the base prompt's run"
        parts.append(f"{site} from {source} into {into}")
    return "; ".join(parts)


def panel_grid(n: int, panel_size: tuple[float, float], columns: int = 4) -> tuple[Any, list[Any]]:
    """A figure of n panels that wraps after `columns`; unused cells are hidden."""
    plt = pyplot()
    cols = min(columns, max(1, n))
    lines = -(-n // cols)
    fig, grid = plt.subplots(
        lines,
        cols,
        figsize=(panel_size[0] * cols + 1.4, panel_size[1] * lines + 0.9),
        squeeze=False,
        constrained_layout=True,
    )
    flat = list(grid.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _title(summary: dict[str, Any], text: str, what: str, width: int = 80) -> str:
    """`name: text` and, on the next lines, what was patched into what (`$` kept literal)."""
    import textwrap

    lines = textwrap.wrap(what.replace("$", r"\$"), width) if what else []
    return "\n".join([f"{summary.get('name', '')}: {text}", *lines])


def line_figure(summary: dict[str, Any], axis: str, metric: str, what: str = "") -> Any:
    """Mean ± standard error of one metric along a 1-D sweep, values in config order; the y axis
    is fitted to the data (a 0.01 effect stays visible) and says so."""
    plt = pyplot()
    grid = summary["grid"]
    values = report.ordered_values(grid, axis)
    entries = [next(e for e in grid if e.get(axis) == v) for v in values]
    means = [_number(e.get(metric), float("nan")) for e in entries]
    errs = [_number(e.get(f"{metric}_stderr"), 0.0) for e in entries]
    fig, ax = plt.subplots(figsize=(max(4.5, 0.5 * len(values) + 2.5), 3.4), constrained_layout=True)
    xs = list(range(len(values)))
    numeric = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    if numeric:
        ax.errorbar(xs, means, yerr=errs, marker="o", ms=4, capsize=3)
    else:
        ax.bar(xs, means, yerr=errs, capsize=3, color="#7b68ae")
    ax.set_xticks(xs, [report.label(v) for v in values], rotation=45 if len(values) > 8 else 0)
    ax.set_xlabel(axis)
    n = max((e.get("n", 0) for e in entries), default=0)
    spread = [(m - e, m + e) for m, e in zip(means, errs, strict=True) if m == m]
    if numeric and spread:
        lo, hi = min(a for a, _ in spread), max(b for _, b in spread)
        pad = (hi - lo) * 0.08 or max(abs(hi), 1e-6) * 0.1
        ax.set_ylim(lo - pad, hi + pad)
    counted = f", n={n}" if n else ""
    ax.set_ylabel(f"{metric} (mean ± s.e.{counted})\naxis fitted to the data", fontsize=8)
    if ax.get_ylim()[0] <= 0 <= ax.get_ylim()[1]:
        ax.axhline(0, color="grey", lw=0.5)
    ax.set_title(_title(summary, f"{metric} by {axis}", what, int(fig.get_figwidth() * 12)), fontsize=9)
    return fig


def heatmap_figure(summary: dict[str, Any], axes: list[str], metric: str, what: str = "") -> Any:
    """One heatmap per value of the panel axes (row × column from report.matrix_axes), in a grid
    that wraps after four panels, sharing one colour scale (a raw effect's centred on the
    corrupted baseline)."""
    grid = summary["grid"]
    row, col, extra = report.matrix_axes(axes)
    combos = report.panels(grid, extra)
    slices = [report.matrix(grid, row, col, fixed, metric) for fixed in combos]
    centre = baseline(summary, metric) if metric in RAW else None
    norm, cmap = norm_for(metric, [v for _, _, data in slices for line in data for v in line], centre)
    rows, cols = slices[0][0], slices[0][1]
    size = (max(2.6, 0.45 * len(cols) + 1.2), 0.32 * len(rows) + 1.3)
    fig, panel_axes = panel_grid(len(combos), size)
    for k, (ax, fixed, (_, _, data)) in enumerate(zip(panel_axes, combos, slices, strict=True)):
        image = ax.imshow(data, aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
        ax.set_xticks(range(len(cols)), [report.label(c) for c in cols], fontsize=8)
        ax.set_yticks(range(len(rows)), [report.label(r) for r in rows], fontsize=8)
        ax.set_xlabel(col)
        ax.set_ylabel(row if k % 4 == 0 else "")
        ax.set_title(", ".join(f"{k}={report.label(v)}" for k, v in fixed.items()) or metric, fontsize=8)
    bar = colorbar(fig, image, panel_axes, metric)
    if centre is not None:
        bar.set_label(f"{metric}\n(centre: the corrupted run's {centre:.3g})", fontsize=8)
    n = max((e.get("n", 0) for e in grid), default=0)
    text = f"mean {metric} over {n} prompts" if n else f"{metric} per grid point"
    fig.suptitle(_title(summary, text, what, int(fig.get_figwidth() * 12)), fontsize=9)
    return fig


def figure(summary: dict[str, Any], metric: str, what: str = "") -> Any | None:
    """The figure of one metric for the run's sweep shape (None for a single point)."""
    grid = summary.get("grid") or []
    axes = [a for a in summary.get("axes", []) if len(report.ordered_values(grid, a)) > 1]
    if not grid or not axes or not any(metric in e for e in grid):
        return None
    if len(axes) == 1:
        return line_figure(summary, axes[0], metric, what)
    return heatmap_figure(summary, axes, metric, what)


def write(run_dir: Path, summary: dict[str, Any], what: str = "") -> list[Path]:
    """Write sweep_<metric>.png for every metric the run computed; return the paths."""
    trace = summary.get("trace")
    if trace and any("by_position" not in c for c in trace["components"].values()):
        return []  # prompts of different lengths: absolute positions mean different tokens
    plt = pyplot()
    written = []
    for metric in summary.get("metrics", []):
        fig = figure(summary, metric, what)
        if fig is None:
            continue
        (run_dir / "plots").mkdir(exist_ok=True)
        path = run_dir / "plots" / f"sweep_{metric}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
