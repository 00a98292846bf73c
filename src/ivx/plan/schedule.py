"""Pack cells into forward passes by a cost model (pure functions; no torch).

A cell continues from the baseline's KV cache after its reusable prefix (its first edited
position) and enters the block stack at its entry block (its first edited layer; see
`ivx.stagger`). A forward over rows of `tokens` new tokens costs about `call` plus, for every
block from its lowest entry up, `block + token * tokens * active` seconds, `active` being the
rows that entered at or below that block: `block` is the fixed price of running a block once
(reading its weights, launching kernels — it dominates small batches on a CPU), `token` the
price of one token through one block. Cells of one prefix always share a forward (their rows
only pay for their own blocks); cells of neighbouring prefixes share one when a block's fixed
price outweighs recomputing the few positions between them. ivx estimates `block` and `token`
for the loaded model and device (`device_cost`), and `ivx.plan.estimate` prices a whole run with
the same model. Every choice is exact: a recomputed position or block gives the baseline's states.
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

    def to_dict(self) -> dict[str, float | int]:
        """For the manifest."""
        return {"block_s": self.block, "token_s": self.token, "call_s": self.call}


# Device constants of the cost model (measured on a 2-core x86 CPU and taken from typical GPUs):
# per-block overhead (module calls, kernel launches), weight bandwidth, arithmetic rate. The CPU's
# arithmetic rate is what one thread sustains through whole blocks (a plain GPT-2-small-shaped
# forward of 2,048 tokens: ~1e11 FLOP/s on one thread). 4e10 packed too few cells per forward:
# with 8e10, the benchmark's workloads ran 5-13% faster in one process, interleaved (T=12 and T=32,
# 1 and 2 threads); across fresh processes the gain is within the machine's noise.
DEVICE_COST = {
    "cpu": {"overhead_s": 3e-4, "bytes_per_s": 5e9, "flops_per_s": 8e10},
    "cuda": {"overhead_s": 1e-4, "bytes_per_s": 1e12, "flops_per_s": 2e13},
}


def device_cost(block_params: int, element_bytes: int, device: str) -> Cost:
    """The cost model of blocks of `block_params` parameters of `element_bytes` each on `device`
    (a torch device type; unknown ones are priced as a GPU)."""
    rates = DEVICE_COST.get(device, DEVICE_COST["cuda"])
    return Cost(
        block=rates["overhead_s"] + block_params * element_bytes / rates["bytes_per_s"],
        token=2 * block_params / rates["flops_per_s"],
        call=2 * rates["overhead_s"],
    )


# ---- staggered entry (rows join the block stack at their own layer; see `ivx.stagger`) -------
REACH = 16  # most prefix groups one forward merges (merging pays only while a block's fixed cost dominates)


@dataclass(frozen=True)
class Staggered:
    """One forward: `cells` (indices into the caller's list, by ascending entry) after `prefix` tokens."""

    prefix: int
    cells: tuple[int, ...]


def _chunk_cost(hist: list[int], per_batch: int, n_layers: int, cost: Cost) -> float:
    """Fixed costs of the forwards over cells with entry histogram `hist`, split every `per_batch` cells."""
    total, seen, level = 0.0, 0, 0
    count = sum(hist)
    for start in range(0, count, per_batch):
        while seen + hist[level] <= start:  # entry of the start-th cell in ascending order
            seen += hist[level]
            level += 1
        total += cost.call + (n_layers - level) * cost.block
    return total


def stagger(
    cells: list[tuple[int, int]],
    n_layers: int,
    rows_per_cell: int,
    length: int,
    max_rows: int,
    cost: Cost,
    recompute: bool = False,
) -> tuple[list[Staggered], float]:
    """Forwards over cells given as (reusable prefix, entry block), with the least estimated time.

    A forward merges the cells of a run of consecutive prefixes and continues after the smallest
    (its other rows recompute a few positions whose states equal the baseline's); each row costs
    its own blocks, each forward `call` plus `block` per block above its lowest entry. With
    `recompute` (recurrent layers: the prefix state is not kept, `engine.recurrent_prefix`), a
    forward after a prefix also pays for running that prefix once. Dynamic programming over the
    sorted prefixes, merging at most `REACH` of them.
    """
    if not cells:
        return [], 0.0
    prefixes = sorted({p for p, _ in cells})
    index = {p: i for i, p in enumerate(prefixes)}
    hists = [[0] * (n_layers + 1) for _ in prefixes]
    work = [0] * len(prefixes)  # sum over cells of blocks run
    for p, e in cells:
        hists[index[p]][e] += 1
        work[index[p]] += n_layers - e
    per_batch = max(1, max_rows // rows_per_cell)
    n = len(prefixes)
    best: list[tuple[float, int]] = [(0.0, 0)] + [(math.inf, 0)] * n
    for j in range(1, n + 1):
        hist, blocks_run = [0] * (n_layers + 1), 0
        for i in range(j - 1, max(-1, j - 1 - REACH), -1):
            hist = [a + b for a, b in zip(hist, hists[i], strict=True)]
            blocks_run += work[i]
            tokens = length - prefixes[i]
            seconds = _chunk_cost(hist, per_batch, n_layers, cost)
            seconds += cost.token * tokens * rows_per_cell * blocks_run
            if recompute and prefixes[i]:
                seconds += cost.call + n_layers * (cost.block + cost.token * prefixes[i] * rows_per_cell)
            if best[i][0] + seconds < best[j][0]:
                best[j] = (best[i][0] + seconds, i)
    bounds, j = [], n
    while j:
        bounds.append((best[j][1], j))
        j = best[j][1]
    by_prefix: list[list[int]] = [[] for _ in prefixes]
    for c, (p, _) in enumerate(cells):
        by_prefix[index[p]].append(c)
    out = []
    for i, j in reversed(bounds):
        members = sorted((c for k in range(i, j) for c in by_prefix[k]), key=lambda c: cells[c][1])
        for start in range(0, len(members), per_batch):
            out.append(Staggered(prefixes[i], tuple(members[start : start + per_batch])))
    return out, best[n][0]
