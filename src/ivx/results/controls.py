"""What controls show: their grids and spreads beside the real run's, warnings, and bar charts.

The controls themselves run in the recipe (`ivx.methods.controls`, `ivx.methods.das_controls`);
this module only summarises and draws what they returned.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ivx.methods.das_controls import DAS_CONTROLS, MARGIN
from ivx.results import gridplot, plots, rundir, tracing
from ivx.results import tables as report
from ivx.results.summary import summarize

if TYPE_CHECKING:
    from ivx.plan.prepared import Prepared

# raw effects, compared across models; normalised metrics divide by the model's own clean −
# corrupted gap, which a model without the behaviour makes ~0 (and the ratio noise)
EFFECTS: tuple[str, ...] = ("indirect_effect", "logit_diff", "target_logit", "target_prob", "kl")


def effect_metric(metrics: list[str]) -> str | None:
    """The raw metric controls are compared on (never a normalised one)."""
    return next((m for m in EFFECTS if m in metrics), None)


def spread(grid: list[dict[str, Any]], metric: str) -> float | None:
    """How much the site matters: max − min of a metric's grid means (None when not computed)."""
    values = [e[metric] for e in grid if isinstance(e.get(metric), int | float)]
    return max(values) - min(values) if values else None


def section(
    run_dir: Path,
    preps: list[Prepared],
    rows: list[dict[str, Any]],
    axes: tuple[str, ...],
    metrics: list[str],
    ran: dict[str, tuple[list[dict[str, Any]], list[Any]]],
) -> tuple[dict[str, Any], list[str]]:
    """Write the controls the recipe ran (`ran`: name → rows, executors): (summary.json's `controls`,
    warnings)."""
    metric = effect_metric(metrics)
    real = spread(summarize(rows, axes, metrics), metric) if metric else None
    out: dict[str, Any] = {}
    warnings: list[str] = []
    for name, (ctrl_rows, executors) in ran.items():
        here = run_dir / "controls" / name
        here.mkdir(parents=True, exist_ok=True)
        rundir.write_text(here / "results.jsonl", "".join(json.dumps(r) + "\n" for r in ctrl_rows))
        entry: dict[str, Any] = {"grid": summarize(ctrl_rows, axes, metrics), "metric": metric}
        entry["spread"] = spread(entry["grid"], metric) if metric else None
        entry["real_spread"] = real
        prep = preps[0]
        if tracing.applies(prep):
            mine = [r for r in ctrl_rows if r.get("corruption") == prep.label]
            entry["trace"] = tracing.aggregate(prep, mine, executors[0])
        out[name] = entry
        if prep.cfg.experiment.output.plots:
            named = dataclasses.replace(prep, cfg=_renamed(prep.cfg, f"{name} control"))
            plots.write_all(here, named, ctrl_rows, {"trace": entry.get("trace")} if "trace" in entry else {})
            gridplot.write(
                here, {"metrics": metrics, "axes": list(axes), **entry, "name": named.cfg.experiment.name}
            )
        if entry["spread"] is not None and real is not None and entry["spread"] >= MARGIN * real:
            warnings.append(
                f"control {name}: {metric} varies over the grid by {entry['spread']:.3f}, at least "
                f"{MARGIN:.0%} of the real run's {real:.3f}; the effect may be an artefact of the method "
                "(summary.json: controls)"
            )
    if out and metric and preps[0].cfg.experiment.output.plots:
        series = {"real": [real], **{n: [e["spread"]] for n, e in out.items()}}
        title = f"{preps[0].cfg.experiment.name}: spread of mean {metric}\nover the grid, real vs controls"
        bars(run_dir / "plots" / f"controls_{metric}.png", title, [metric], series, "max − min over the grid")
    return out, warnings


def _renamed(cfg: Any, suffix: str) -> Any:
    exp = cfg.experiment
    return dataclasses.replace(cfg, experiment=exp.model_copy(update={"name": f"{exp.name} ({suffix})"}))


def text(summary: dict[str, Any]) -> list[str]:
    """Terminal lines: each control's spread of effects beside the real one's."""
    lines = []
    for name, entry in (summary.get("controls") or {}).items():
        if entry.get("spread") is None:
            continue
        lines.append(
            f"control {name}: {entry['metric']} varies over the grid by {entry['spread']:.3f} "
            f"(real run: {entry['real_spread']:.3f})"
        )
    return lines


def bars(
    path: Path, title: str, groups: list[str], series: dict[str, list[float | None]], ylabel: str
) -> Path:
    """A grouped bar chart: the real result beside each control, per group (grid point)."""
    plt = gridplot.pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(groups) * len(series) / 2 + 2), 3.2))
    width = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
        xs = [i + k * width for i in range(len(groups))]
        ax.bar(xs, [float("nan") if v is None else v for v in values], width, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))], groups, fontsize=7, rotation=30)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.axhline(0, color="black", lw=0.5)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def das_outputs(run_dir: Path, summary: dict[str, Any]) -> list[str]:
    """plots/iia_controls.png and the terminal lines: held-out IIA beside each control's."""
    points = summary.get("points") or []
    names = ["control", *(n for n in DAS_CONTROLS[:2] if any(f"{n}_iia" in p for p in points))]
    labels = {
        "control": "placebo (random basis)",
        "shuffled_labels": "shuffled labels",
        "random_init": "random init",
    }
    groups = [", ".join(f"{a}={report.label(p.get(a))}" for a in summary.get("axes", [])) for p in points]
    series = {"real": [p["iia"] for p in points]}
    series.update({labels[n]: [p.get(f"{n}_iia") for p in points] for n in names})
    bars(run_dir / "plots" / "iia_controls.png", "held-out IIA: real vs controls", groups, series, "IIA")
    lines = ["held-out IIA vs controls: " + " | ".join(["real", *(labels[n] for n in names)])]
    for group, *values in zip(groups, *series.values(), strict=True):
        lines.append(f"  {group or 'site'}: " + " | ".join("-" if v is None else f"{v:.3f}" for v in values))
    return lines
