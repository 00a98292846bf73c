"""What a readout run writes besides its rows: readout.csv (long format), its figure, its terminal table.

The logit lens: one readout.csv row per (cell, site, position); DLA: one row per (cell, part). The
figures (`readout_plots`: one panel per grid point) go to `plots/logit_lens.png` / `plots/dla.png`.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from ivx.results import readout_plots, rundir

Row = dict[str, Any]


def _keys(row: Row, axes: list[str]) -> Row:
    """A readout.csv row's cell, prompt and grid point (`point.<axis>`: apart from the readout's own
    `layer`, `head`, … columns)."""
    return {
        "cell": row["cell"],
        "prompt_index": row["prompt_index"],
        **{f"point.{a}": row.get(a) for a in axes},
    }


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
        lens = section["kind"] == "logit_lens"
        fig = readout_plots.lens_figure(section, rows, tokens) if lens else readout_plots.dla_figure(section)
        (run_dir / "plots").mkdir(exist_ok=True)
        fig.savefig(run_dir / "plots" / f"{section['kind']}.png", dpi=110)
        import matplotlib.pyplot as plt

        plt.close(fig)


def table_text(summary: dict[str, Any]) -> str:
    """The readout's terminal table: per layer, or the largest contributions; a sweep's grid points
    side by side (the lens) or one line each (DLA), the first TABLE_POINTS of them."""
    section = summary.get("readout")
    if not section:
        return ""
    text = _sweep_text(section) if len(section["points"]) > 1 else _point_text(section)
    warnings = [p["warning"] for p in section["points"] if "warning" in p]
    return text + (f"\nwarning: {warnings[0]}" if warnings else "")


def _point_text(section: dict[str, Any]) -> str:
    """One grid point's readout: the lens per site, or DLA's total and largest contributions."""
    point = section["points"][0]
    lines = [f"readout: {section['kind']} ({section['norm']}), {point['n']} prompts"]
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


TABLE_POINTS = 8


def _sweep_text(section: dict[str, Any]) -> str:
    """A sweep's readout: the lens's mean P(target) at the last position per site × grid point, or
    per grid point DLA's total and its four largest contributions."""
    points = section["points"]
    shown = points[:TABLE_POINTS]
    more = f" (first {len(shown)} of {len(points)} grid points)" if len(points) > len(shown) else ""
    labels = [", ".join(f"{k}={v}" for k, v in p["point"].items()) for p in shown]
    lines = [f"readout: {section['kind']} ({section['norm']}){more}"]
    if section["kind"] == "logit_lens":
        width = max(9, *(len(label) for label in labels))
        lines.append("mean P(target) at the last position")
        lines.append(f"{'site':<16} " + " ".join(f"{label:>{width}}" for label in labels))
        for s, site in enumerate(section["sites"]):
            values = " ".join(f"{p['target_prob']['last'][s]:>{width}.3f}" for p in shown)
            lines.append(f"{site:<16} {values}")
        return "\n".join(lines)
    for label, point in zip(labels, shown, strict=True):
        top = ", ".join(f"{t['component']} {t['mean']:.2f}" for t in point["top"][:4])
        lines.append(
            f"{label}: total {point['total']:.3f} (logit {point['logit']:.3f}), n={point['n']}; {top}"
        )
    return "\n".join(lines)
