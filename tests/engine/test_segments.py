"""`execution.segments`: where a backend may cut the loop's batches into tasks (pure, no model)."""

from __future__ import annotations

from ivx.engine.loop import Step, segments
from ivx.model.memory import MAX_ROWS
from ivx.plan.grid import Cell


def _cells(start: int, n: int) -> list[Cell]:
    return [Cell(i, 0, (), ()) for i in range(start, start + n)]


def _indices(parts: list[list[Cell]]) -> list[list[int]]:
    return [[c.index for c in part] for part in parts]


def test_noop_steps_come_first_and_forwards_stay_together_without_deferred_rows() -> None:
    steps = [
        Step(_cells(0, 2), noop=True),
        Step(_cells(2, 3)),
        Step(_cells(5, 4), prefix=3, entries=(1, 1, 1, 1)),
    ]
    assert _indices(segments(steps, samples=10)) == [[0, 1], [2, 3, 4, 5, 6, 7, 8]]


def test_a_cut_falls_exactly_where_deferred_rows_would_overflow() -> None:
    samples = 8
    per_step = MAX_ROWS // samples // 2  # two steps fill the loop's pending head rows exactly
    a, b, c = _cells(0, per_step), _cells(per_step, per_step), _cells(2 * per_step, 1)
    steps = [Step(a, deferred=True), Step(b, deferred=True), Step(_cells(999, 2)), Step(c, deferred=True)]
    parts = _indices(segments(steps, samples))
    # a + b hold 512 rows (not more than MAX_ROWS: no flush); c would overflow, so the loop flushes
    # before it, and the plain step between stays with a and b
    assert parts == [[*range(2 * per_step), 999, 1000], [2 * per_step]]


def test_no_steps_no_segments() -> None:
    assert segments([], samples=3) == []
