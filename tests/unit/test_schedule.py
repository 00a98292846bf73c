"""The packing of cells into forwards minimises the cost model's estimate (pure, no torch)."""

from __future__ import annotations

import itertools

import pytest

from ivx.schedule import Batch, Cost, partition


def _brute_force(skips: list[int], n_layers: int, tokens: int, per_batch: int, cost: Cost) -> float:
    """Cheapest split of the sorted cells into contiguous batches, by enumerating every cut set."""
    best = float("inf")
    n = len(skips)
    for cuts in itertools.product([False, True], repeat=n - 1):
        bounds = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [n]
        if any(b - a > per_batch for a, b in itertools.pairwise(bounds)):
            continue
        total = sum(cost.forward(n_layers - skips[a], b - a, tokens) for a, b in itertools.pairwise(bounds))
        best = min(best, total)
    return best


def test_weight_bound_forwards_merge_every_layer() -> None:
    # a block costs as much as 1000 tokens: one forward for all twelve layers' cells
    batches, seconds = partition(list(range(1, 13)), 12, 1, 4, 512, Cost(block=1.0, token=1e-3, call=0.5))
    assert batches == [Batch(0, 12, 1)]
    assert seconds == pytest.approx(0.5 + 11 * (1.0 + 1e-3 * 12 * 4))


def test_compute_bound_forwards_skip_blocks_per_layer() -> None:
    # tokens dominate: every layer level gets its own forward and skips the blocks below it
    batches, seconds = partition([1, 1, 2, 3], 4, 2, 8, 512, Cost(block=1e-6, token=1.0))
    assert [(b.start, b.end, b.skip) for b in batches] == [(0, 2, 1), (2, 3, 2), (3, 4, 3)]
    assert seconds == pytest.approx(3 * (1e-6 + 2 * 2 * 8) + 2 * (1e-6 + 2 * 8) + (1e-6 + 2 * 8))


@pytest.mark.parametrize("block", [0.05, 0.5, 2.0, 8.0])
def test_partition_matches_brute_force(block: float) -> None:
    skips = [0, 1, 1, 2, 4, 5, 5, 6, 7]
    cost = Cost(block=block, token=0.1)
    batches, seconds = partition(skips, 8, 1, 6, 4, cost)
    assert seconds == pytest.approx(_brute_force(skips, 8, 6, 4, cost), rel=0.25)
    covered = [i for b in batches for i in range(b.start, b.end)]
    assert covered == list(range(len(skips)))
    assert all(b.skip == skips[b.start] and b.end - b.start <= 4 for b in batches)


def test_rows_cap_and_unsorted_input() -> None:
    batches, _ = partition([0] * 10, 2, 3, 5, 9, Cost(1.0, 0.0))
    assert [(b.start, b.end) for b in batches] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    with pytest.raises(ValueError):
        partition([2, 1], 2, 1, 1, 8, Cost(1.0, 1.0))
