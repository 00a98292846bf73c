"""Check attribution estimates against exact patching on a subset of cells.

`attribution.verify: {top_k: N, random: M}` re-runs the N cells with the largest |estimate| (by
GradDrop score when `grad_drop` is on, as AtP* uses it to find false negatives) and M other
cells drawn with the experiment's seed, with the exact executor, and reports per metric the
Pearson and Spearman correlations between estimate and exact value over those cells and the
top-k overlap: the share of the N cells ranked highest by |estimate| that are also among the N
highest by |exact effect| within the verified cells.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ivx.engine.executor import Executor


def pearson(xs: list[float], ys: list[float]) -> float:
    """Pearson correlation; NaN for fewer than two points or a constant series."""
    n = len(xs)
    if n < 2:
        return float("nan")
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


def _ranks(xs: list[float]) -> list[float]:
    """Ranks with ties averaged (1-based)."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman rank correlation (Pearson of tie-averaged ranks)."""
    return pearson(_ranks(xs), _ranks(ys))


def _value(row: dict[str, Any], metric: str) -> float | None:
    value = row.get(metric)
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def choose(rows: list[dict[str, Any]], top_k: int, n_random: int, key: str, seed: int) -> list[int]:
    """Cell indices to verify: the top_k by |row[key]|, then n_random others (seeded)."""
    scored = sorted(rows, key=lambda r: -abs(_value(r, key) or 0.0))
    top = [r["cell"] for r in scored[:top_k]]
    rest = sorted(r["cell"] for r in scored[top_k:])
    return top + random.Random(seed).sample(rest, min(n_random, len(rest)))


def verify(executor: Executor, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Re-run chosen cells exactly and compare with the estimates (None without `verify`)."""
    exp = executor.exp
    spec = exp.attribution.verify
    if spec is None or not rows:
        return None
    metric = exp.metrics[0]
    key = "grad_drop" if exp.attribution.grad_drop else metric
    chosen = choose(rows, spec.top_k, spec.random, key, exp.seed)
    by_index = {c.index: c for c in executor.plan.cells}
    exact: dict[int, dict[str, Any]] = {}
    for outputs in executor.execute([by_index[i] for i in chosen if i in by_index]):
        exact.update({o.cell.index: o.row for o in outputs})
    estimates = {r["cell"]: r for r in rows}
    report: dict[str, Any] = {
        "cells": len(exact),
        "top_k": spec.top_k,
        "random": spec.random,
        "ranked_by": key,
    }
    per_metric = {}
    for name in exp.metrics:
        pairs: list[tuple[float, float]] = []
        for i in chosen:
            e, x = _value(estimates.get(i, {}), name), _value(exact.get(i, {}), name)
            if e is not None and x is not None:
                pairs.append((e, x))
        est, ex = [p[0] for p in pairs], [p[1] for p in pairs]
        k = min(spec.top_k, len(pairs))
        top_est = set(sorted(range(len(pairs)), key=lambda i: -abs(est[i]))[:k])
        top_ex = set(sorted(range(len(pairs)), key=lambda i: -abs(ex[i]))[:k])
        per_metric[name] = {
            "pearson": _finite(pearson(est, ex)),
            "spearman": _finite(spearman(est, ex)),
            "top_k_overlap": len(top_est & top_ex) / k if k else None,
            "max_abs_error": max((abs(e - x) for e, x in pairs), default=None),
        }
    report["metrics"] = per_metric
    report["verified"] = [
        {"cell": i, "estimate": _value(estimates[i], metric), "exact": _value(exact[i], metric)}
        for i in chosen
        if i in exact
    ]
    return report


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def text(report: dict[str, Any]) -> str:
    """Terminal lines summarising a verification report."""
    lines = [
        f"attribution check: {report['cells']} cells re-run exactly (top {report['top_k']} by "
        f"|{report['ranked_by']}| + {report['random']} random)"
    ]
    for name, m in report["metrics"].items():
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        lines.append(
            f"  {name}: pearson {fmt(m['pearson'])}  spearman {fmt(m['spearman'])}  "
            f"top-k overlap {fmt(m['top_k_overlap'])}  max |error| {fmt(m['max_abs_error'])}"
        )
    return "\n".join(lines)


def for_run(executors: list[Executor], labels: list[str | None], rows: list[dict[str, Any]]) -> Any:
    """The run's `attribution_verification` entry: one report, or one per corruption label."""
    if labels == [None]:
        return verify(executors[0], rows)
    reports = {
        label: verify(e, [r for r in rows if r.get("corruption") == label])
        for e, label in zip(executors, labels, strict=True)
    }
    return {k: v for k, v in reports.items() if v} or None
