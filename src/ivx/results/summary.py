"""Summary statistics and warnings of a run: what summary.json says about the grid.

`summarize` gives each grid point (one combination of sweep values) the mean, standard error
and count of every metric over prompts; `contrast_warnings` flags runs whose clean and corrupted
baselines barely differ, where every effect measured against them is noise-dominated. Which
metrics are contrasts, and of which quantity, comes from the metric table (`metrics.METRICS`).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Any

from ivx.core import metrics

# below these gaps between the clean and the corrupted run, effects are noise-dominated
MIN_GAP: dict[str, float] = {"target_prob": 0.05, "logit_diff": 1.0}
# contrast metric → the per-row quantity whose clean-vs-corrupted gap it divides or subtracts
GAP_METRICS: dict[str, str] = {
    name: m.quantity
    for name, m in metrics.METRICS.items()
    if "contrast" in m.needs and m.quantity is not None and m.quantity in MIN_GAP
}


def stats(values: list[float]) -> tuple[float, float, int]:
    """(mean, standard error of the mean, count); NaNs for no values, stderr 0 for one."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan"), 0
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var / n), n


def summarize(rows: list[dict[str, Any]], axes: tuple[str, ...], metric_names: list[str]) -> list[dict]:
    """Mean, standard error and count of each metric per grid point (over prompts).

    Grid points are keyed by their sweep values as JSON, so any value shape (`last`, -1,
    `[1, [1, 4]]`) is its own point, in the order the rows first show it.
    """
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[tuple(json.dumps(row.get(a)) for a in axes)].append(row)
    out = []
    for key, items in groups.items():
        entry: dict[str, Any] = {a: json.loads(k) for a, k in zip(axes, key, strict=True)}
        entry["n"] = len(items)
        for name in metric_names + ["p_clean", "p_corrupted"]:
            vals = [r[name] for r in items if isinstance(r.get(name), int | float)]
            if not vals:
                continue
            mean, stderr, _ = stats(vals)
            entry[name] = mean
            entry[f"{name}_stderr"] = stderr
        out.append(entry)
    return out


def contrast_warnings(prompts: list[dict[str, Any]], metric_names: list[str]) -> list[str]:
    """Warn when the clean and corrupted runs barely differ: there is then nothing to restore,
    and normalised metrics divide by a near-zero difference."""
    out = []
    for key in sorted({GAP_METRICS[m] for m in metric_names if m in GAP_METRICS}):
        gaps = [
            abs(p["clean"][key] - p["corrupted"][key])
            for p in prompts
            if isinstance(p["clean"].get(key), float) and isinstance(p["corrupted"].get(key), float)
        ]
        small = sum(g < MIN_GAP[key] for g in gaps)
        if gaps and small > 0.2 * len(gaps):
            out.append(
                f"{small} of {len(gaps)} prompts: clean and corrupted {key} differ by less than "
                f"{MIN_GAP[key]}; the corruption barely changes the model's answer there, so "
                f"effects measured against it are noise-dominated (summary.json: prompts)"
            )
    return out
