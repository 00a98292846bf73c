"""What a readout run writes besides its rows: readout.csv (long format), its figure, its terminal table.

The logit lens: one readout.csv row per (cell, site, position) and `plots/logit_lens.png` — the
first prompt's target probability as a layer × position heatmap (top tokens written in) beside the
mean target probability at the last position per layer. DLA: one row per (cell, part) and
`plots/dla.png` — the mean contribution of every head (layer × head, diverging, centred on 0)
beside the MLPs', the embeddings' and the biases' bars. Figures show the first grid point.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from ivx.results import rundir

Row = dict[str, Any]


def _keys(row: Row, axes: list[str]) -> Row:
    return {"cell": row["cell"], "prompt_index": row["prompt_index"], **{a: row.get(a) for a in axes}}


def lens_rows(section: dict[str, Any], rows: list[Row], tokens: dict[int, list[str]]) -> list[Row]:
    """readout.csv of a logit lens: one row per (cell, site, position)."""
    out = []
    for row in rows:
        words = tokens.get(row["prompt_index"], [])
        for s, site in enumerate(section["sites"]):
            for j, prob in enumerate(row["lens_target_prob"][s]):
                item = {**_keys(row, section["axes"]), "site": site, "layer": s - 1, "position": j}
                item["token"] = words[j] if j < len(words) else None
                item["target_prob"] = prob
                item["target_rank"] = row["lens_target_rank"][s][j]
                if "lens_foil_prob" in row:
                    item["foil_prob"] = row["lens_foil_prob"][s][j]
                item["top_token"] = row["lens_top"][s][j]
                out.append(item)
    return out


def dla_rows(section: dict[str, Any], rows: list[Row]) -> list[Row]:
    """readout.csv of DLA: one row per (cell, part); each cell's parts sum to its `dla_logit`."""
    out = []
    for row in rows:
        keys = {**_keys(row, section["axes"]), "direction": row["dla_direction"]}

        def part(component: str, layer: int | None, head: int | None, value: float, keys: Row = keys) -> Row:
            return {**keys, "component": component, "layer": layer, "head": head, "contribution": value}

        for layer, per_head in enumerate(row["dla_heads"]):
            out += [part("head", layer, h, v) for h, v in enumerate(per_head)]
            out.append(part("attn_bias", layer, None, row["dla_attn_bias"][layer]))
            out.append(part("mlp", layer, None, row["dla_mlp"][layer]))
        out.append(part("embed", None, None, row["dla_embed"]))
        out.append(part("bias", None, None, row["dla_bias"]))
    return out


def _csv(path: Path, rows: list[Row]) -> None:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    rundir.write_text(path, buffer.getvalue())


def write(run_dir: Path, summary: dict[str, Any], rows: list[Row], plots: bool) -> None:
    """readout.csv and the readout's figure, if the run has a readout (else nothing)."""
    section = summary.get("readout")
    if not section:
        return
    tokens = {p["prompt_index"]: p["tokens"] for p in summary.get("prompts", [])}
    long = lens_rows(section, rows, tokens) if section["kind"] == "logit_lens" else dla_rows(section, rows)
    _csv(run_dir / "readout.csv", long)
    if plots and rows:
        fig = lens_figure(section, rows, tokens) if section["kind"] == "logit_lens" else dla_figure(section)
        (run_dir / "plots").mkdir(exist_ok=True)
        fig.savefig(run_dir / "plots" / f"{section['kind']}.png", dpi=110)
        import matplotlib.pyplot as plt

        plt.close(fig)


def _first(section: dict[str, Any], rows: list[Row]) -> Row:
    """The first row of the first grid point."""
    point = section["points"][0]["point"]
    return next(r for r in rows if all(r.get(a) == v for a, v in point.items()))


def lens_figure(section: dict[str, Any], rows: list[Row], tokens: dict[int, list[str]]) -> Any:
    """The logit-lens figure: one prompt's layer × position heatmap and the mean per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    row = _first(section, rows)
    grid = row["lens_target_prob"]  # [sites][positions]
    labels = ["emb"] + [str(layer) for layer in range(len(grid) - 1)]
    words = tokens.get(row["prompt_index"], [""] * len(grid[0]))
    fig, (ax, side) = plt.subplots(
        1, 2, figsize=(4 + 0.7 * len(words), 3 + 0.3 * len(grid)), width_ratios=[3, 1]
    )
    image = ax.imshow(grid, aspect="auto", origin="lower", cmap="Purples", vmin=0.0, vmax=1.0)
    for s, per_pos in enumerate(row["lens_top"]):
        for j, word in enumerate(per_pos):
            ax.text(j, s, word.strip()[:8], ha="center", va="center", fontsize=6, color="tab:orange")
    ax.set_xticks(range(len(words)), [w.strip() for w in words], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_ylabel("layer (residual after block; emb = embeddings)")
    ax.set_title(f"logit lens, prompt {row['prompt_index']}: P(target) (text: the top token)", fontsize=9)
    fig.colorbar(image, ax=ax, label="P(target)")
    point = section["points"][0]["target_prob"]
    side.errorbar(point["last"], range(len(labels)), xerr=point["last_se"], marker="o")
    side.set_yticks(range(len(labels)), labels)
    side.set_xlim(0, 1)
    side.set_xlabel("mean P(target), last position")
    side.set_title(f"{section['points'][0]['n']} prompts", fontsize=9)
    fig.tight_layout()
    return fig


def dla_figure(section: dict[str, Any]) -> Any:
    """The DLA figure: mean contribution per head (layer × head) and per MLP / embeddings / biases."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    point = section["points"][0]
    heads = point["heads"]  # [layers][heads]
    layers = len(heads)
    bars = point["mlp"] + [point["embed"], sum(point["attn_bias"]) + point["bias"]]
    names = [f"MLP{layer}" for layer in range(layers)] + ["embed", "biases"]
    errors = point["mlp_se"] + [point["embed_se"], 0.0]
    lim = max(abs(v) for per in heads for v in per) or 1.0  # heads on their own diverging scale
    fig, (ax, side) = plt.subplots(1, 2, figsize=(9, 3 + 0.35 * layers))
    image = ax.imshow(heads, aspect="auto", origin="lower", cmap="RdBu_r", norm=Normalize(-lim, lim))
    for layer, per_head in enumerate(heads):
        for h, value in enumerate(per_head):
            shade = "white" if abs(value) > 0.6 * lim else "black"
            ax.text(h, layer, f"{value:.2f}", ha="center", va="center", fontsize=7, color=shade)
    ax.set_xticks(range(len(heads[0])))
    ax.set_yticks(range(layers))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    direction = " / ".join(point["direction"])
    ax.set_title(f"direct logit attribution ({direction}), {point['n']} prompts", fontsize=9)
    fig.colorbar(image, ax=ax, label="mean contribution (logits)")
    side.barh(range(len(bars)), bars, xerr=errors, color="tab:gray")
    side.set_yticks(range(len(bars)), names)
    side.axvline(0, color="black", linewidth=0.5)
    reach = max(abs(v) + e for v, e in zip(bars, errors, strict=True)) or 1.0
    side.set_xlim(-reach * 1.1, reach * 1.1)
    side.set_xlabel("mean contribution (logits)")
    side.set_title(f"sum {point['total']:.3f} = logit {point['logit']:.3f}", fontsize=9)
    fig.tight_layout()
    return fig


def table_text(summary: dict[str, Any]) -> str:
    """The readout's terminal table (first grid point): per layer, or the largest contributions."""
    section = summary.get("readout")
    if not section:
        return ""
    point = section["points"][0]
    where = ", ".join(f"{k}={v}" for k, v in point["point"].items())
    first = f", first grid point ({where})" if where else ""
    lines = [f"readout: {section['kind']} ({section['norm']}), {point['n']} prompts{first}"]
    if section["kind"] == "logit_lens":
        prob, rank = point["target_prob"], point["target_rank"]
        lines.append(f"{'site':<16} {'P(target)':>9} {'± se':>6} {'rank':>7}")
        for s, site in enumerate(section["sites"]):
            lines.append(
                f"{site:<16} {prob['last'][s]:>9.3f} {prob['last_se'][s]:>6.3f} {rank['last'][s]:>7.1f}"
            )
        return "\n".join(lines)
    lines.append(
        f"direction {' / '.join(point['direction'])}: total {point['total']:.3f}, logit {point['logit']:.3f}"
    )
    lines += [f"{t['component']:<10} {t['mean']:>8.3f}" for t in point["top"]]
    return "\n".join(lines)
