"""Staggered entry: each row of a forward joins the block stack at its own first edited layer.

A cell that restores layer 12 needs no block below 13 recomputed: those blocks' outputs equal
the baseline run's, which ivx keeps. Packing cells of many layers into one forward used to mean
starting every row at the lowest layer among them. Here rows are sorted by their entry block and
block k runs on the first `active[k]` rows only (the rows whose entry is ≤ k); the other rows'
outputs of block k are the stored baseline states, appended after the computed ones. So a
forward over all layers of one restored position does exactly the work the cells need and pays
each block's fixed cost (reading its weights) once.

Exact: a row outside the active slice is not edited at or below block k (its entry is its first
edited block), so its block-k output is the baseline's. Module hooks on a block see the whole
batch (the slicing happens inside the block's `forward`), and hooks inside block k see the
active rows, whose indices are unchanged because they come first.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ivx.model import components

if TYPE_CHECKING:
    import torch

    from ivx.model.loading import LoadedModel

# states(block, start, out): the baseline's block output of rows start: ([rows - start, t, d]),
# written into `out` when given (else a new tensor)
States = Callable[[int, int, "torch.Tensor | None"], "torch.Tensor"]


def active_rows(entries: Sequence[int], block: int) -> int:
    """Rows (sorted by entry) that block `block` computes: those entering at or below it."""
    return bisect.bisect_right(entries, block)


def cache_rows(entries: Sequence[int], cache_layers: int, blocks: int) -> list[int]:
    """Rows each cache layer holds for a staggered forward: those of the block that uses it (all
    rows for a block no row runs: its cache is unused). A block may use several consecutive cache
    layers (LongCat-Flash's two attentions per block use layers 2i and 2i + 1)."""
    per_block = cache_layers // blocks if blocks and cache_layers % blocks == 0 else 1
    return [active_rows(entries, layer // per_block) or len(entries) for layer in range(cache_layers)]


def _head(value: Any, active: int, rows: int, tokens: int, folded: bool = False) -> Any:
    """The active rows of a block argument that has one entry per row; anything else unchanged.

    `folded`: the argument has rows folded with heads, [rows * heads, ...] (BLOOM's `alibi`)."""
    import torch

    if isinstance(value, torch.Tensor):
        if folded and value.shape[0] % rows == 0:
            return value[: active * (value.shape[0] // rows)]
        batched = value.dim() >= 3 or (value.dim() == 2 and value.shape[1] == tokens)
        return value[:active] if batched and value.shape[0] == rows else value
    if isinstance(value, tuple) and value and all(isinstance(v, torch.Tensor) for v in value):
        return tuple(_head(v, active, rows, tokens) for v in value)
    return value


def _wrapped(original: Callable, block: int, active: int, rows: int, states: States) -> Callable:
    def forward(hidden: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        tokens = hidden.shape[1]
        args = tuple(_head(a, active, rows, tokens) for a in args)
        kwargs = {k: _head(v, active, rows, tokens, k == "alibi") for k, v in kwargs.items()}
        out = original(hidden[:active], *args, **kwargs)
        many = isinstance(out, tuple | list)  # OpenAI GPT's blocks return a list
        first = out[0] if many else out
        full = first.new_empty((rows, *first.shape[1:]))
        full[:active] = first
        states(block, active, full[active:])
        if not many:
            return full
        return [full, *out[1:]] if isinstance(out, list) else (full, *out[1:])

    return forward


@contextmanager
def staggered(lm: LoadedModel, entries: Sequence[int], states: States, as_tuple: int = 0) -> Iterator[None]:
    """Run the next forward with row r entering at block `entries[r]` (ascending).

    `states(k, start)` returns the baseline's block-k output of rows `start:` (continuing
    positions only). Blocks below `entries[0]` return the stored states of all rows (as a tuple of
    `as_tuple` items, the rest None, when the model's blocks return tuples).
    """

    blocks = components.blocks(lm.model)
    rows = len(entries)
    saved = [(block, block.__dict__.get("forward")) for block in blocks]
    try:
        if entries[0] > 0:  # blocks below every entry: all return what the first entered block reads
            value = states(entries[0] - 1, 0, None)
            out = (value, *[None] * (as_tuple - 1)) if as_tuple else value
            for block in blocks[: entries[0]]:
                block.forward = lambda *args, **kwargs: out  # noqa: ARG005
        for k, block in enumerate(blocks[entries[0] :], start=entries[0]):
            active = active_rows(entries, k)
            if active == rows:
                continue
            block.forward = _wrapped(block.forward, k, active, rows, states)
        yield
    finally:
        for block, previous in saved:
            if previous is None:
                block.__dict__.pop("forward", None)
            else:
                block.forward = previous
