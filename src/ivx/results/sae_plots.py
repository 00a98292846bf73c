"""The figure of attribution over SAE features: the top features, and features vs the error node.

One figure per SAE site in summary.json's `sae_attribution` (written by
`methods.sae_attribution_summary`): left, the features with the largest mean estimated effect
(one bar per feature × position, labelled `f<feature> @ <position>`); right, per position, the
summed effect of all feature nodes beside the reconstruction-error node's — how much of the
site's effect the SAE's features carry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ivx.results.gridplot import pyplot


def figure(site: dict[str, Any], title: str = "") -> Any:
    """The matplotlib Figure of one site's report (`sae_attribution.sites[i]`)."""
    plt = pyplot()
    metric = site["metric"]
    top = site["top_features"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, max(3.0, 0.28 * len(top) + 1.2)))
    labels = [f"f{t['feature']} @ {t['position']}" for t in top][::-1]
    values = [t.get(metric) or 0.0 for t in top][::-1]
    left.barh(range(len(values)), values, color=["#b2182b" if v > 0 else "#2166ac" for v in values])
    left.set_yticks(range(len(values)), labels, fontsize=7)
    left.axvline(0, color="black", lw=0.6)
    left.set_xlabel(f"estimated effect on {metric} (mean over prompts)", fontsize=8)
    left.set_title(f"top {len(top)} features × positions", fontsize=9)
    positions = [p["position"] for p in site["by_position"]]
    width = 0.4
    feats = [p["features"] or 0.0 for p in site["by_position"]]
    errors = [p["error"] or 0.0 for p in site["by_position"]]
    right.bar([x - width / 2 for x in positions], feats, width, label="all features", color="#4393c3")
    right.bar([x + width / 2 for x in positions], errors, width, label="error node", color="#999999")
    right.axhline(0, color="black", lw=0.6)
    right.set_xlabel("position", fontsize=8)
    right.set_ylabel(f"estimated effect on {metric}", fontsize=8)
    right.set_title("features vs reconstruction error, per position", fontsize=9)
    right.legend(fontsize=7)
    where = f"{site['component']} layer {site['layer']}, SAE {Path(site['sae']).name}"
    fig.suptitle(f"{title}attribution over SAE features: {where}", fontsize=9)
    fig.tight_layout()
    return fig


def write(run_dir: Path, summary: dict[str, Any]) -> list[Path]:
    """Write plots/sae_attribution[_<label>]_<i>.png for every SAE site; return the paths."""
    section = summary.get("sae_attribution")
    if not section:
        return []
    groups = {"": section} if "sites" in section else {f"_{k}": v for k, v in section.items()}
    plt = pyplot()
    written = []
    for suffix, group in groups.items():
        for i, site in enumerate(group["sites"]):
            if not site["top_features"] and not site["by_position"]:
                continue
            fig = figure(site, f"{suffix[1:]}: " if suffix else "")
            (run_dir / "plots").mkdir(exist_ok=True)
            path = run_dir / "plots" / f"sae_attribution{suffix}_{i}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    return written
