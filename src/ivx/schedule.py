"""Pack cells into forward passes by a measured cost model (pure functions; no torch).

A forward of `rows` sequences of `tokens` new tokens through the blocks from `skip` upward
costs about `call + (n_layers - skip) * (block + token * rows * tokens)` seconds: `block` is the
fixed price of running one block once (reading its weights, launching kernels — it dominates
small batches on a CPU), `token` the price of one token through one block. Cells that restore
a late layer can skip the blocks below it (layer reuse), but packing cells of many layers into
one forward pays `block` once for all of them; which wins depends on the model, the device and
the prompt length, so ivx estimates `block` and `token` for the loaded model and device
(`shortcuts.estimate`) and lets this module choose, per group of cells sharing a prompt length
and a reusable prefix, the batches that minimise the estimated time. Every choice is exact: a
row whose own first edited layer lies above its batch's skip recomputes blocks whose output
equals the baseline's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Cost:
    """Seconds: one block run once (`block`), one token through one block (`token`), one forward call."""

    block: float
    token: float
    call: float = 0.0  # per forward: embedding, final norm, hooks, Python

    def forward(self, n_blocks: int, rows: int, tokens: int) -> float:
        """Estimated seconds of one forward through `n_blocks` blocks."""
        return self.call + n_blocks * (self.block + self.token * rows * tokens)

    def to_dict(self) -> dict[str, float | int]:
        """For the manifest."""
        return {"block_s": self.block, "token_s": self.token, "call_s": self.call}


@dataclass(frozen=True)
class Batch:
    """Cells [start, end) of a skip-sorted group, run together with the blocks below `skip` skipped."""

    start: int
    end: int
    skip: int


def _split(skips: list[int], start: int, end: int, per_batch: int) -> list[Batch]:
    return [Batch(i, min(end, i + per_batch), skips[i]) for i in range(start, end, per_batch)]


def _estimate(batches: list[Batch], n_layers: int, rows_per_cell: int, tokens: int, cost: Cost) -> float:
    return sum(cost.forward(n_layers - b.skip, (b.end - b.start) * rows_per_cell, tokens) for b in batches)


def partition(
    skips: list[int], n_layers: int, rows_per_cell: int, tokens: int, max_rows: int, cost: Cost
) -> tuple[list[Batch], float]:
    """Batches over cells sorted by `skips` (ascending) with the least estimated time, and that time.

    Dynamic programming over the distinct skip levels: a batch set merges the cells of levels
    i..j (their skip is level i's), split into forwards of at most `max_rows` rows.
    """
    if not skips:
        return [], 0.0
    if any(a > b for a, b in zip(skips, skips[1:], strict=False)):
        raise ValueError("skips must be sorted")
    per_batch = max(1, max_rows // rows_per_cell)
    bounds = [0] + [i for i in range(1, len(skips)) if skips[i] != skips[i - 1]] + [len(skips)]
    n = len(bounds) - 1
    start: tuple[float, list[Batch]] = (0.0, [])
    best = [start] + [(math.inf, start[1]) for _ in range(n)]
    for j in range(1, n + 1):
        for i in range(j):
            batches = _split(skips, bounds[i], bounds[j], per_batch)
            total = best[i][0] + _estimate(batches, n_layers, rows_per_cell, tokens, cost)
            if total < best[j][0]:
                best[j] = (total, best[i][1] + batches)
    return best[n][1], best[n][0]
