"""Summary statistics and warnings of a run: what summary.json says about the grid.

`summarize` gives each grid point (one combination of sweep values) the mean, standard error
and count of every metric over prompts; `contrast_warnings` flags runs whose clean and corrupted
baselines barely differ, where every effect measured against them is noise-dominated. Which
metrics are contrasts, and of which quantity, comes from the metric table (`metrics.METRICS`).
`scoring_warnings` says what the scored tokens cannot tell, `scored_text` which tokens were scored.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Any

from ivx.core import metrics
from ivx.plan.tokenization import TokenizedPrompt

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


def _bare(token: str) -> bool:
    """A token that is only a space marker (GPT-2 'Ġ', SentencePiece '▁') or whitespace."""
    return not token.replace("Ġ", "").replace("▁", "").strip()


def scoring_warnings(prompts: list[TokenizedPrompt], answer: str = "first_token") -> list[str]:
    """What the scored tokens cannot tell: shared first tokens, bare space tokens, multi-token answers
    (the last only under `answer: first_token`)."""
    full = answer == "full"
    shared, bare, multi = [], [], []
    for p in prompts:
        for name, toks in (("target", p.target_tokens), ("foil", p.foil_tokens)):
            if toks and _bare(toks[0]):
                bare.append(f"prompt {p.index} {name} {toks[0]!r}")
            if toks and len(toks) > 1 and not full:
                multi.append(p)
        if p.target_ids and p.foil_ids and p.target_ids[0] == p.foil_ids[0]:
            shared.append(p)
    out = []
    if shared:
        p = shared[0]
        out.append(
            f"{len(shared)} prompts: target and foil share their first token (e.g. prompt {p.index}: "
            f"{p.record.target!r} / {p.record.foil!r} both start with {(p.target_tokens or ('',))[0]!r}), so "
            "they cannot be told apart by it"
        )
    if bare:
        out.append(
            f"{len(bare)} answers start with a bare space token ({bare[0]}): the scored token carries no "
            "word; check the tokenizer's leading-space convention"
        )
    if multi:
        p = multi[0]
        ids = p.target_tokens if p.target_tokens and len(p.target_tokens) > 1 else p.foil_tokens
        out.append(
            f"{len(set(q.index for q in multi))} prompts have multi-token answers (e.g. prompt {p.index}: "
            f"{list(ids or ())}); only the first token is scored (summary.json: prompts)"
        )
    return out


def scored_text(prompts: list[dict[str, Any]], limit: int = 3) -> str:
    """One line per prompt (the first few) naming the token ids that were scored."""
    lines = []
    for p in prompts[:limit]:
        parts = []
        for name in ("target", "foil"):
            ids, toks = p.get(f"{name}_ids"), p.get(f"{name}_tokens") or ["?"]
            if ids:
                parts.append(
                    f"{name} {toks[0]!r} (id {ids[0]}" + (f" of {len(ids)} tokens)" if len(ids) > 1 else ")")
                )
        if parts:
            lines.append(f"scored, prompt {p['prompt_index']}: " + ", ".join(parts))
    if len(prompts) > limit and lines:
        lines.append(f"(every prompt's scored tokens: summary.json → prompts, {len(prompts)} prompts)")
    return "\n".join(lines)
