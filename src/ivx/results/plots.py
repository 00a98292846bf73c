"""Heatmaps of a run: token (or token category) × layer per component, in the style of ROME's figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ivx.plan.positions import category
from ivx.results import gridplot, tracing

LABELS = {
    "block_output": "hidden state (block output)",
    "block_input": "hidden state (block input)",
    "residual_mid": "hidden state (after attention)",
    "mlp_output": "MLP output",
    "attention_output": "attention output",
}


def panel_title(panel: str) -> str:
    """A panel's title: the site's readable name, then any other condition (`sever=mlp_output`)."""
    site, *conditions = panel.split(" | ")
    names = {"sever=none": "nothing severed", "sever=mlp_output": "MLPs severed"}
    names["sever=attention_output"] = "attention severed"
    extra = [names.get(c, c) for c in conditions]
    return "\n".join([LABELS.get(site, site), *extra])


def site_cmap(component: str) -> str:
    """One colour family per kind of site (as in the ROME figures), white at zero."""
    if component.startswith(("mlp",)):
        return "Greens"
    if component.startswith("head_"):
        return "Oranges"
    if component.startswith(("attention", "query", "key", "value")):
        return "Reds"
    return "Purples"  # the residual stream: embedding, block input/output, residual_mid


CATEGORY_LABELS = {
    "bos": "BOS token",
    "before_subject": "before subject",
    "subject_first": "first subject token",
    "subject_middle": "middle subject tokens",
    "subject_last": "last subject token",
    "subsequent_first": "first subsequent token",
    "subsequent_further": "further tokens",
    "last": "last token",
}


def _panels(
    path: Path,
    title: str,
    matrices: dict[str, list[list[float]]],
    row_labels: list[str],
    metric: str,
    n_layers: int,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    comps = list(matrices)
    # one honest colour scale shared by the panels: 0..1 for normalized metrics, centred on 0
    # (diverging) when a signed effect goes negative; the ROME colour per site otherwise
    norm, cmap = gridplot.norm_for(metric, [v for k in comps for line in matrices[k] for v in line])
    # panels wrap after four (12 panels are a 4 × 3 grid, not a strip); one colour bar when all
    # panels share one colour map, else one per panel (ROME's colour per site, same range)
    fig, axes = gridplot.panel_grid(len(comps), (3.0, 0.32 * len(row_labels) + 1.3))
    shared = norm.vmin < 0 or len({site_cmap(c) for c in comps}) == 1
    for k, (ax, comp) in enumerate(zip(axes, comps, strict=True)):
        data = np.array(matrices[comp], dtype=float)
        shade = site_cmap(comp) if norm.vmin >= 0 else cmap
        image = ax.imshow(data, aspect="auto", cmap=shade, norm=norm, interpolation="nearest")
        ax.set_yticks(range(len(row_labels)))
        ax.set_yticklabels(row_labels if k % 4 == 0 else [""] * len(row_labels), fontsize=8)
        step = max(1, n_layers // 12)
        ax.set_xticks(range(0, n_layers, step))
        ax.set_xlabel("layer")
        ax.set_title(panel_title(comp), fontsize=9)
        if not shared:
            gridplot.colorbar(fig, image, ax, metric)
    if shared:
        gridplot.colorbar(fig, image, axes, metric)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _lines(path: Path, trace: dict[str, Any]) -> None:
    """AIE per layer with standard-error bands, one panel per component, one line per category."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    comps = list(trace["components"])
    fig, axes = gridplot.panel_grid(len(comps), (3.8, 3.0))
    layers = np.arange(trace["n_layers"])
    for ax, comp in zip(axes, comps, strict=True):
        for cat, stats in trace["components"][comp]["by_category"].items():
            mean = np.array(stats["mean"], dtype=float)
            err = np.array(stats["stderr"], dtype=float)
            ax.plot(layers, mean, marker="o", ms=3, label=CATEGORY_LABELS.get(cat, cat))
            ax.fill_between(layers, mean - 1.96 * err, mean + 1.96 * err, alpha=0.2)
        ax.set_title(panel_title(comp), fontsize=10)
        ax.set_xticks(layers[:: max(1, len(layers) // 12)])
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_xlabel("layer")
        ax.set_ylabel(f"average {trace['metric']} (95% CI)")
    axes[-1].legend(fontsize=7, loc="best")
    fig.suptitle(f"average {trace['metric']} per layer by token category (95% CI)", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def severed_figure(trace: dict[str, Any], category: str = "subject_last") -> Any | None:
    """ROME's Figure 3: the effect of restoring one token's state per layer, as bars side by side
    for each severing condition (none / MLPs / attention), with standard errors. None when the
    trace has no `sever` axis or no such token category."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels = [k for k in trace["components"] if " | sever=" in k]
    stats = [trace["components"][k]["by_category"].get(category) for k in panels]
    if not panels or any(s is None for s in stats):
        return None
    layers = np.arange(trace["n_layers"])
    width = 0.8 / len(panels)
    fig, ax = plt.subplots(figsize=(max(4.5, 0.9 * len(layers) + 2), 3.2), constrained_layout=True)
    for i, (key, stat) in enumerate(zip(panels, stats, strict=True)):
        label = panel_title(key).split("\n")[-1]
        ax.bar(
            layers + (i - (len(panels) - 1) / 2) * width,
            np.array(stat["mean"], dtype=float),  # null in summary.json = no cell at that layer
            width,
            yerr=np.array(stat["stderr"], dtype=float),
            label=label,
        )
    ax.set_xticks(layers)
    ax.set_xlabel("layer of the restored state")
    ax.set_ylabel(f"average {trace['metric']} (± s.e.)")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_title(f"restoring the {CATEGORY_LABELS.get(category, category)}", fontsize=10)
    ax.legend(fontsize=7)
    return fig


def write_all(
    run_dir: Path, prep: Any, rows: list[dict[str, Any]], summary: dict[str, Any], suffix: str = ""
) -> list[Path]:
    """Write every plot the run supports into run_dir/plots; return their paths."""

    trace = summary.get("trace")
    if not trace:
        return []
    out_dir = run_dir / "plots"
    out_dir.mkdir(exist_ok=True)
    name = prep.cfg.experiment.name + (f" ({suffix.lstrip('_')} corruption)" if suffix else "")
    return _averages(out_dir, trace, name, suffix) + _per_fact(out_dir, prep, rows, trace, suffix)


def _window_title(trace: dict[str, Any]) -> str:
    """The restore windows for a figure title (`\nwindow: mlp_output 1 … layer(s) …`), or ''."""
    text = tracing.window_text(trace)
    return f"\n{text}" if text else ""


def _averages(out_dir: Path, trace: dict[str, Any], name: str, suffix: str) -> list[Path]:
    """The dataset-average figures: by token category, by position, severed paths."""
    written: list[Path] = []
    metric = trace["metric"]
    n_layers = trace["n_layers"]
    comps = list(trace["components"])
    # dataset average by token category
    cats = [c for c in CATEGORY_LABELS if any(c in trace["components"][k]["by_category"] for k in comps)]
    matrices = {
        k: [
            trace["components"][k]["by_category"].get(c, {"mean": [float("nan")] * n_layers})["mean"]
            for c in cats
        ]
        for k in comps
    }
    path = out_dir / f"average_by_category{suffix}.png"
    if trace.get("has_subject", True):  # without a subject every token is one category: no figure
        _panels(
            path,
            f"{name}: average {metric} over {trace['facts']} prompts" + _window_title(trace),
            matrices,
            [CATEGORY_LABELS[c] for c in cats],
            metric,
            n_layers,
        )
        written.append(path)
        path = out_dir / f"average_by_category_ci{suffix}.png"
        _lines(path, trace)
        written.append(path)
    # position × layer when all prompts share a length
    if all("by_position" in trace["components"][k] for k in comps):
        first = trace["components"][comps[0]]["by_position"]
        tokens = first.get("labels") or first["tokens"] or [str(i) for i in range(len(first["mean"]))]
        matrices = {k: trace["components"][k]["by_position"]["mean"] for k in comps}
        path = out_dir / f"average_by_position{suffix}.png"
        title = f"{name}: {metric} by position" + _window_title(trace)
        _panels(path, title, matrices, tokens, metric, n_layers)
        written.append(path)
    fig = severed_figure(trace)
    if fig is not None:
        import matplotlib.pyplot as plt

        path = out_dir / f"severed{suffix}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _per_fact(
    out_dir: Path, prep: Any, rows: list[dict[str, Any]], trace: dict[str, Any], suffix: str
) -> list[Path]:
    """One layer × position figure per prompt (the first `trace.plots_per_fact`)."""
    written: list[Path] = []
    metric = trace["metric"]
    n_layers = trace["n_layers"]
    comps = list(trace["components"])
    limit = prep.cfg.experiment.trace.plots_per_fact if prep.cfg.experiment.trace else 3
    for p in prep.prompts[:limit]:
        grid: dict[str, list[list[float]]] = {
            k: [[float("nan")] * n_layers for _ in range(p.length)] for k in comps
        }
        for row in rows:
            if row["prompt_index"] != p.index or not isinstance(row.get(metric), int | float):
                continue
            layer, positions, _ = tracing.site(row, prep, p)
            if len(positions) == 1:  # a multi-token value (`subject`, [1, 4]) has no single cell
                grid[tracing.panel(row, prep)][positions[0]][layer] = row[metric]
        labels = [
            "BOS"
            if p.bos and i == 0
            else (f"{t}*" if category(i, p.length, p.subject_span, p.bos).startswith("subject") else t)
            for i, t in enumerate(p.base_tokens)
        ]
        target = p.record.target or ""
        path = out_dir / f"prompt{p.index:04d}{suffix}.png"
        _panels(path, f"{p.record.base!r} → {target!r}", grid, labels, metric, n_layers)
        written.append(path)
    return written
