"""What `ivx train` shows: the final IIA table, the training and IIA figures, the bundle's note.

Interchange intervention accuracy (IIA, Geiger et al. 2023) is reported per grid point beside
its control: the same intervention with an untrained (random) basis. Axes keep the config's
order; the training figure has one small panel per grid point.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ivx.config.fields import is_ref
from ivx.results import gridplot
from ivx.results import tables as report
from ivx.store import bundle


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "-"


def iia_table(summary: dict[str, Any], width: int | None = None) -> str:
    """Held-out IIA with the random-basis control beside it, site × layer (one block per rest)."""
    points = summary.get("points") or []
    axes = [a for a in summary.get("axes", []) if len(report.ordered_values(points, a)) > 1]
    lines = ["held-out IIA (random-basis control) per grid point"]
    if len(axes) < 2:
        axis = axes[0] if axes else None
        rows = [
            [report.label(p.get(axis)) if axis else "site", _fmt(p["iia"]), _fmt(p.get("control_iia"))]
            for p in points
        ]
        lines.append(report.wrap([axis or "", "IIA", "control"], rows, width))
    else:
        row, col, extra = report.matrix_axes(axes)
        for fixed in report.panels(points, extra):
            rows, cols, iia = report.matrix(points, row, col, fixed, "iia")
            _, _, ctrl = report.matrix(points, row, col, fixed, "control_iia")
            if fixed:
                lines.append(", ".join(f"{k}={report.label(v)}" for k, v in fixed.items()))
            header = [f"{row} \\ {col}"] + [report.label(c) for c in cols]
            body = [
                [report.label(r)] + [f"{a:.3f} ({b:.3f})" for a, b in zip(line, cline, strict=True)]
                for r, line, cline in zip(rows, iia, ctrl, strict=True)
            ]
            lines.append(report.wrap(header, body, width))
    best = points[summary["best_point"]] if "best_point" in summary else None
    if best is not None:
        where = ", ".join(f"{a}={report.label(best.get(a))}" for a in summary.get("axes", []))
        lines.append(f"best: point {summary['best_point']} ({where}) IIA {summary['best_iia']:.3f} → bundle/")
    return "\n".join(lines)


def training_figure(history: list[dict[str, Any]], points: list[dict[str, Any]], axes: list[str]) -> Any:
    """Small multiples: held-out IIA (and its control) and training loss per epoch, per grid point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [a for a in axes if len(report.ordered_values(points, a)) > 1]
    row, col = (report.matrix_axes(shown)[:2]) if len(shown) >= 2 else (None, shown[0] if shown else None)
    rows = report.ordered_values(points, row) if row else [None]
    cols = report.ordered_values(points, col) if col else [None]
    fig, grid = plt.subplots(
        len(rows),
        len(cols),
        figsize=(2.2 * len(cols) + 1, 1.8 * len(rows) + 0.8),
        squeeze=False,
        sharex=True,
        sharey=True,
        constrained_layout=True,
    )
    for p in points:
        i = rows.index(p.get(row)) if row else 0
        j = cols.index(p.get(col)) if col else 0
        ax = grid[i][j]
        mine = [h for h in history if h["point"] == p["point"]]
        epochs = [h["epoch"] for h in mine]
        ax.plot(epochs, [h["iia"] for h in mine], marker="o", ms=3, color="C0", label="held-out IIA")
        ax.axhline(p.get("control_iia", float("nan")), color="C3", ls="--", lw=1, label="control IIA")
        twin = ax.twinx()
        twin.plot(epochs, [h["loss"] for h in mine], color="grey", lw=1, label="training loss")
        twin.tick_params(labelsize=6)
        if j == len(cols) - 1:
            twin.set_ylabel("training loss", fontsize=7, color="grey")
        legend_from = (ax, twin)
        ax.set_ylim(0, 1.02)
        ax.set_title(", ".join(f"{a}={report.label(p.get(a))}" for a in (row, col) if a), fontsize=8)
    for ax in grid[-1]:
        ax.set_xlabel("epoch")
    for line in grid:
        line[0].set_ylabel("IIA")
    pairs = [a.get_legend_handles_labels() for a in legend_from]
    handles, labels = [h for hs, _ in pairs for h in hs], [t for _, ts in pairs for t in ts]
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=7)
    return fig


def iia_figure(summary: dict[str, Any]) -> Any | None:
    """Held-out IIA heatmap over the sweep (config order), 0..1."""

    grid_summary = {"name": "DAS", "grid": summary.get("points") or [], "axes": summary.get("axes", [])}
    return gridplot.figure(grid_summary, "iia")


def write(run_dir: Path, summary: dict[str, Any]) -> list[Path]:
    """training.png and iia.png into run_dir/plots; return their paths."""
    import matplotlib.pyplot as plt

    (run_dir / "plots").mkdir(exist_ok=True)
    history = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    written = []
    figures = {
        "training.png": training_figure(history, summary["points"], summary.get("axes", [])),
        "iia.png": iia_figure(summary),
    }
    for name, fig in figures.items():
        if fig is None:
            continue
        fig.savefig(run_dir / "plots" / name, dpi=110)
        plt.close(fig)
        written.append(run_dir / "plots" / name)
    return written


def bundle_note(summary: dict[str, Any], run_dir: Path) -> str:
    """The bundle README section saying which grid point it holds and how to export another."""
    best = summary["points"][summary["best_point"]]
    where = ", ".join(f"{a}={report.label(best.get(a))}" for a in summary.get("axes", [])) or "one site"
    return (
        "\n## Which trained point this is\n\n"
        f"`ivx train` trained {len(summary['points'])} grid point(s); this bundle holds point "
        f"{summary['best_point']} ({where}), the best held-out IIA ({summary['best_iia']:.3f}). "
        f"Every point's parameters are in `{run_dir}/interventions.safetensors`; export another "
        f"with `ivx save {run_dir} --point N --out DIR` (N as in the run's results.jsonl).\n"
    )


def export_point(run_dir: Path, point: int, out: Path) -> Path:
    """Bundle one trained grid point of an `ivx train` run (the run's bundle/ holds the best)."""
    import yaml
    from safetensors.torch import load_file

    summary = json.loads((run_dir / "summary.json").read_text())
    points = summary.get("points") or []
    if not 0 <= point < len(points):
        raise bundle.BundleError(f"--point {point}: the run has points 0..{len(points) - 1}")
    row = points[point]
    raw = yaml.safe_load((run_dir / "config.yaml").read_text())["interventions"][0]
    concrete = yaml.safe_load((run_dir / "interventions.yaml").read_text())["interventions"][0]
    model = json.loads((run_dir / "manifest.json").read_text()).get("model", {})
    for key, value in raw.items():
        if is_ref(value):
            concrete[key] = row[value[1:]]
    if concrete["layer"] < 0:
        concrete["layer"] += model["n_layers"]
    prefix = f"{concrete['name']}.point{point}."
    weights = load_file(str(run_dir / "interventions.safetensors"))
    mine = {f"{concrete['name']}.{k[len(prefix) :]}": v for k, v in weights.items() if k.startswith(prefix)}
    base = {k: model.get(k) for k in ("name", "revision", "d_model", "n_layers")}
    return bundle.save(out, [concrete], mine, base)
