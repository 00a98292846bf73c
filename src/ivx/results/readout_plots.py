"""The readouts' figures: one panel per grid point (the first MAX_POINTS, with a note).

`plots/logit_lens.png`: per grid point, the mean P(target) over the point's prompts as a site ×
position heatmap, positions aligned from the last token over the shortest prompt's length (the
summary's `from_end`; prompts of different lengths share their last positions, not their first);
a position's label is its token where every prompt has the same one there, else its offset from
the end. `plots/dla.png`: per grid point, a row of the mean contribution of every head (layer ×
head, diverging, centred on 0) beside bars for the MLPs, the embeddings and the biases.
"""

from __future__ import annotations

from typing import Any

from ivx.results import gridplot

MAX_POINTS = 12  # panels drawn; the title says when a sweep has more
Row = dict[str, Any]


def _label(point: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items())


def _points(section: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """The grid points drawn, and the note when some are left out."""
    points = section["points"]
    shown = points[:MAX_POINTS]
    note = f" (first {len(shown)} of {len(points)} grid points)" if len(points) > len(shown) else ""
    return shown, note


def _columns(point: dict[str, Any], rows: list[Row], tokens: dict[int, list[str]], width: int) -> list[str]:
    """Labels of the `width` last positions: the token all of the point's prompts share, else `-k`."""
    mine = [r for r in rows if all(r.get(a) == v for a, v in point["point"].items())]
    labels = []
    for back in range(width, 0, -1):
        seen = {tuple(tokens.get(r["prompt_index"], []))[-back:][:1] for r in mine}
        word = next(iter(seen))[0].strip() if len(seen) == 1 and next(iter(seen)) else ""
        labels.append(word or f"-{back}")
    return labels


def lens_figure(section: dict[str, Any], rows: list[Row], tokens: dict[int, list[str]]) -> Any:
    """The logit-lens figure: per grid point, mean P(target) per site × position (aligned from the end)."""
    shown, note = _points(section)
    sites = ["emb"] + [str(layer) for layer in range(len(section["sites"]) - 1)]
    width = max(len(p["target_prob"]["from_end"][0]) for p in shown)
    fig, axes = gridplot.panel_grid(len(shown), (max(3.0, 0.55 * width + 1.2), 0.35 * len(sites) + 1.4), 3)
    image = None
    for k, (ax, point) in enumerate(zip(axes, shown, strict=True)):
        grid = point["target_prob"]["from_end"]  # [sites][last positions]
        image = ax.imshow(grid, aspect="auto", origin="lower", cmap="Purples", vmin=0.0, vmax=1.0)
        for s, per_pos in enumerate(grid):
            for j, value in enumerate(per_pos):
                if value >= 0.005:  # the rest reads as blank
                    shade = "white" if value > 0.6 else "black"
                    ax.text(j, s, f"{value:.2f}", ha="center", va="center", fontsize=6, color=shade)
        labels = _columns(point, rows, tokens, len(grid[0]))
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(sites)), sites, fontsize=7)
        ax.set_ylabel("residual after layer" if k % 3 == 0 else "")
        ax.set_title(f"{_label(point['point']) or 'all prompts'} (n={point['n']})", fontsize=8)
    gridplot.colorbar(fig, image, axes, "mean P(target)")
    fig.suptitle(
        "logit lens: mean P(target) over prompts, positions aligned from the last token over the "
        f"shortest prompt{note}",
        fontsize=9,
    )
    return fig


def dla_figure(section: dict[str, Any]) -> Any:
    """The DLA figure: per grid point, mean contribution per head and per MLP / embeddings / biases."""
    from matplotlib.colors import Normalize

    plt = gridplot.pyplot()
    shown, note = _points(section)
    layers = len(shown[0]["heads"])
    fig, grid = plt.subplots(
        len(shown), 2, figsize=(9, (2.4 + 0.35 * layers) * len(shown)), squeeze=False, constrained_layout=True
    )
    lim = max(abs(v) for p in shown for per in p["heads"] for v in per) or 1.0  # one scale for heads
    for point, (ax, side) in zip(shown, grid, strict=True):
        heads = point["heads"]  # [layers][heads]
        image = ax.imshow(heads, aspect="auto", origin="lower", cmap="RdBu_r", norm=Normalize(-lim, lim))
        for layer, per_head in enumerate(heads):
            for h, value in enumerate(per_head):
                shade = "white" if abs(value) > 0.6 * lim else "black"
                ax.text(h, layer, f"{value:.2f}", ha="center", va="center", fontsize=7, color=shade)
        ax.set_xticks(range(len(heads[0])))
        ax.set_yticks(range(layers))
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        where = _label(point["point"])
        ax.set_title(f"{where + ': ' if where else ''}heads, {point['n']} prompts", fontsize=9)
        fig.colorbar(image, ax=ax, label="mean contribution (logits)")
        _bars(side, point)
    direction = " / ".join(shown[0]["direction"])
    fig.suptitle(f"direct logit attribution ({direction}){note}", fontsize=9)
    return fig


def _bars(side: Any, point: dict[str, Any]) -> None:
    """One grid point's MLP, embedding and bias contributions as horizontal bars (± se)."""
    layers = len(point["mlp"])
    bars = point["mlp"] + [point["embed"], sum(point["attn_bias"]) + point["bias"]]
    names = [f"MLP{layer}" for layer in range(layers)] + ["embed", "biases"]
    errors = point["mlp_se"] + [point["embed_se"], 0.0]
    side.barh(range(len(bars)), bars, xerr=errors, color="tab:gray")
    side.set_yticks(range(len(bars)), names)
    side.axvline(0, color="black", linewidth=0.5)
    reach = max(abs(v) + e for v, e in zip(bars, errors, strict=True)) or 1.0
    side.set_xlim(-reach * 1.1, reach * 1.1)
    side.set_xlabel("mean contribution (logits)")
    side.set_title(f"sum {point['total']:.3f} = logit {point['logit']:.3f}", fontsize=9)
