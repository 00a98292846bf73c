"""The packing of cells into staggered forwards minimises the cost model's estimate (pure, no torch)."""

from __future__ import annotations

import itertools
import random

import pytest

from ivx.plan.schedule import REACH, Cost, stagger


def _forward_cost(entries: list[int], n_layers: int, rows_per_cell: int, tokens: int, cost: Cost) -> float:
    """One forward, simulated block by block: each block runs the rows that entered at or below it."""
    total = cost.call
    for block in range(min(entries), n_layers):
        active = sum(1 for e in entries if e <= block) * rows_per_cell
        total += cost.block + cost.token * tokens * active
    return total


def _brute_force(
    cells: list[tuple[int, int]], n_layers: int, per_batch: int, length: int, cost: Cost
) -> float:
    """Cheapest cut of the sorted prefixes into runs (each run: entry-sorted chunks of `per_batch`)."""
    prefixes = sorted({p for p, _ in cells})
    best = float("inf")
    for cuts in itertools.product([False, True], repeat=len(prefixes) - 1):
        bounds = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [len(prefixes)]
        total = 0.0
        for a, b in itertools.pairwise(bounds):
            run = sorted(e for p, e in cells if p in prefixes[a:b])
            for start in range(0, len(run), per_batch):
                total += _forward_cost(
                    run[start : start + per_batch], n_layers, 1, length - prefixes[a], cost
                )
        best = min(best, total)
    return best


@pytest.mark.parametrize("block", [1e-4, 0.05, 0.5, 4.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stagger_matches_brute_force(block: float, seed: int) -> None:
    rng = random.Random(seed)
    cells = [(rng.randrange(0, 8), rng.randrange(0, 7)) for _ in range(rng.randrange(5, 30))]
    cost = Cost(block=block, token=0.01, call=0.1)
    forwards, seconds = stagger(cells, 6, 1, 10, 7, cost)
    assert seconds == pytest.approx(_brute_force(cells, 6, 7, 10, cost))
    # the forwards' own simulated cost is the estimate; every cell runs once, entry-sorted
    simulated = sum(
        _forward_cost([cells[c][1] for c in f.cells], 6, 1, 10 - f.prefix, cost) for f in forwards
    )
    assert simulated == pytest.approx(seconds)
    assert sorted(c for f in forwards for c in f.cells) == list(range(len(cells)))
    for f in forwards:
        entries = [cells[c][1] for c in f.cells]
        assert entries == sorted(entries) and len(f.cells) <= 7
        assert f.prefix <= min(cells[c][0] for c in f.cells)  # the run's smallest prefix


def test_weight_bound_merges_every_prefix_and_compute_bound_keeps_them_apart() -> None:
    cells = [(p, layer + 1) for p in range(10) for layer in range(12)]  # a layer x position trace
    merged, _ = stagger(cells, 12, 1, 10, 512, Cost(block=1.0, token=1e-6, call=1.0))
    assert [(f.prefix, len(f.cells)) for f in merged] == [(0, 120)]
    apart, _ = stagger(cells, 12, 2, 10, 512, Cost(block=1e-6, token=1.0))
    assert [(f.prefix, len(f.cells)) for f in apart] == [(p, 12) for p in range(10)]


def test_rows_cap_and_reach() -> None:
    forwards, _ = stagger([(0, 0)] * 10, 2, 3, 5, 9, Cost(1.0, 0.0))
    assert [len(f.cells) for f in forwards] == [3, 3, 3, 1]
    many = [(p, 1) for p in range(3 * REACH)]
    forwards, _ = stagger(many, 4, 1, 3 * REACH, 10**6, Cost(block=1.0, token=0.0))
    assert len(forwards) == 3  # a forward merges at most REACH prefixes
