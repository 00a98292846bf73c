"""The execute loop: cells in, `CellOutput`s out, batch by batch (the backend seam).

Cells are grouped by prompt length (no padding, so numbers equal single-sequence runs) and packed
into batched forwards by `steps`: no-op cells are answered from the corrupted baseline, the rest
are scheduled by the cost model (`schedule`) — continuing from the baseline's KV cache, each row
entering the blocks at its first edit (`stagger`), their last positions unembedded together when
the head can be deferred. A backend (`backends`) receives batches of cells and returns what `execute`
yields; `segments` cuts the same stream where no deferred rows are pending, so any consecutive
run of segments executed alone gives the same bits.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ivx.engine import shortcuts, trim
from ivx.engine.baselines import Acts, Baselines, SiteKey, needed
from ivx.engine.cellpatches import PatchBuilder, PatchSet
from ivx.engine.rows import Rows
from ivx.engine.shortcut_state import ShortcutState
from ivx.engine.workload import Workload
from ivx.model import hooks
from ivx.model.memory import MAX_ROWS
from ivx.plan import schedule
from ivx.plan.grid import Cell

if TYPE_CHECKING:
    import torch


@dataclass
class CellOutput:
    """What one executed cell produced."""

    cell: Cell
    row: dict[str, Any]
    logits: torch.Tensor | None  # [vocab] (or [seq, vocab]) mean over samples
    collected: dict[str, torch.Tensor]


@dataclass(frozen=True)
class Step:
    """One batch of the loop: no-op cells answered from the baseline, or one scheduled forward."""

    cells: list[Cell]
    prefix: int = 0  # reused tokens (KV cache)
    entries: tuple[int, ...] = ()  # per cell, the block its rows enter at (layer reuse; see `stagger`)
    noop: bool = False
    deferred: bool = False  # backbone only; the head runs later for many steps at once


@dataclass
class Engine:
    """Everything the loop reads: the workload, its baselines, shortcut state, patches and rows."""

    work: Workload
    base: Baselines
    state: ShortcutState
    patches: PatchBuilder
    rows: Rows


def steps(engine: Engine, cells: list[Cell]) -> list[Step]:
    """The batches `execute` runs for `cells`, counted in the shortcut report as they will run."""
    work, state = engine.work, engine.state
    noop = [cell for cell in cells if state.noop(cell)]
    per_step = max(1, MAX_ROWS // work.samples)  # rows of [vocab] logits held at once, as for a forward
    out = [Step(noop[i : i + per_step], noop=True) for i in range(0, len(noop), per_step)]
    state.noop_cells += len(noop)
    for cell in noop:
        group = _group(state, work.length(cell))
        group["cells"] += 1
        group["noop_cells"] += 1
    skipped = {cell.index for cell in noop}
    todo = {cell.index for cell in cells if cell.index not in skipped}
    # packed over the whole plan, so a cell's batch shape (its reused prefix and entry
    # blocks) does not depend on which cells are left to do (a resumed run gives the same bits)
    whole = [cell for cell in work.plan.cells if cell.index in todo or not state.noop(cell)]
    defer = work.exp.output.logits != "all" and state.on("defer_head")
    for planned, prefix, planned_entries in _schedule(engine, whole):
        keep = [i for i, cell in enumerate(planned) if cell.index in todo]
        if not keep:
            continue
        chunk, entries = [planned[i] for i in keep], tuple(planned_entries[i] for i in keep)
        _count(state, work.length(chunk[0]), len(chunk), prefix, entries)
        collects = any(e.kind == "collect" for cell in chunk for e in cell.edits)
        out.append(Step(chunk, prefix, entries, deferred=defer and chunk[0].index >= 0 and not collects))
    return out


def segments(batches: list[Step], samples: int) -> list[list[Cell]]:
    """The cells of `batches` cut where the loop holds no deferred rows (task boundaries)."""
    out = [step.cells for step in batches if step.noop]
    current: list[Cell] = []
    pending = 0  # deferred rows the loop would hold
    for step in batches:
        if step.noop:
            continue
        if step.deferred:
            if pending + len(step.cells) * samples > MAX_ROWS:  # the loop flushes here
                out.append(current)
                current, pending = [], 0
            pending += len(step.cells) * samples
        current.extend(step.cells)
    out.append(current)
    return [s for s in out if s]


def execute(engine: Engine, batches: list[Step]) -> Iterator[list[CellOutput]]:
    """Run the batches of `steps`; yield each batch's outputs (deferred ones when their head runs)."""
    import torch

    work, base = engine.work, engine.base
    all_logits = work.exp.output.logits == "all"
    pending: list[tuple[list[Cell], torch.Tensor]] = []  # cells whose logits are not yet computed

    def flush() -> list[CellOutput]:
        cells, hidden = [c for chunk, _ in pending for c in chunk], torch.cat([h for _, h in pending])
        pending.clear()
        out: list[CellOutput] = []
        step = head_cells(work)
        for start in range(0, len(cells), step):
            rows = slice(start * work.samples, (start + step) * work.samples)
            out += outputs(engine, cells[start : start + step], shortcuts.unembed(work.lm, hidden[rows]))
        return out

    for step in batches:
        if step.noop:
            logits = torch.cat([base.corrupt_logits[c.prompt] for c in step.cells])
            yield outputs(engine, step.cells, logits.to(work.lm.device))
            continue
        chunk, prefix = step.cells, step.prefix
        entries = [e for e in step.entries for _ in range(work.samples)]
        ids = torch.tensor([base.run_ids(work, c.prompt) for c in chunk]).repeat_interleave(
            work.samples, dim=0
        )
        patched = engine.patches.build(chunk, offset=prefix)
        past = engine.state.past(chunk, prefix, entries, engine.patches) if prefix else None
        entering = engine.state.entering(chunk, prefix, entries)
        trims = step.deferred and engine.state.on("trim_final") and trim.applicable(work.lm, patched.patches)
        trimming = trim.trimmed(work.lm, trims)
        with hooks.patching(work.lm.model, patched.patches), entering, trimming:
            start = engine.state.start(prefix)
            if step.deferred:
                hidden = shortcuts.final_hidden(work.lm, ids[:, prefix:], past, start)
            else:
                logits, _ = work.forward(ids[:, prefix:], all_logits, past, start=start)
        if step.deferred:
            if sum(len(h) for _, h in pending) + len(hidden) > MAX_ROWS:
                yield flush()
            pending.append((chunk, hidden))
            continue
        yield outputs(engine, chunk, logits, patched)
    if pending:
        yield flush()


HEAD_BYTES = 24 << 20  # [rows, vocab] float32 logits per head call (see `head_cells`)


def head_cells(work: Workload) -> int:
    """Cells per call of the deferred LM head: their logits stay within `HEAD_BYTES`.

    The head's output and the metrics' temporaries are [rows, vocab]: with a 50k vocabulary, 512
    rows are 100 MB per tensor, which the allocator maps fresh (and the OS faults in) every time,
    while blocks under glibc's 32 MB mapping threshold are reused from the heap. Measured on a
    GPT-2-small shape, 1 CPU thread: the head and metrics of 384 rows took 0.80 s in one call
    and 0.46 s in chunks of 120 (`benchmarks/shortcut_bench.py`, T=32).
    """
    return max(1, HEAD_BYTES // (4 * work.lm.info.vocab_size * work.samples))


def corrupted_pass(
    engine: Engine, capture: set[SiteKey], riders: dict[int, tuple[int, ...]] | None = None
) -> Acts:
    """Corrupted baseline runs (no site edits), keeping KV caches and block outputs for the shortcuts.

    Stores each prompt's corrupted logits in the baselines and returns the activations at the
    `capture` sites ([samples, seq, d] per prompt). The source prompts in `riders` (prompt → ids,
    as long as its base prompt; see `baselines.riders`) run as extra unedited rows after the
    batch's own, and their logits and source captures go to the baselines as `capture` would.
    """
    import torch

    work, state, base = engine.work, engine.state, engine.base
    riders = riders or {}
    S = work.samples
    state_sites = []
    if state.on("layer_reuse"):
        state_sites = [work.site("block_output", layer) for layer in range(work.lm.info.n_layers)]
    wanted = {key: work.site(*key) for key in capture}
    acts: Acts = {key: {} for key in capture}
    source_sites = {key: work.site(*key) for key in needed(work.plan, "source")} if riders else {}
    for key in source_sites:
        base.source_acts.setdefault(key, {})
    sites = list(dict.fromkeys([*state_sites, *wanted.values(), *source_sites.values()]))
    by_len: dict[int, list[Cell]] = defaultdict(list)
    for p in work.prompts.values():
        by_len[p.length].append(Cell(-1 - p.index, p.index, (), ()))
    for length, group in sorted(by_len.items()):
        rows_per_cell = S + (1 if any(c.prompt in riders for c in group) else 0)
        per_batch = max(1, work.batch_rows(length) // rows_per_cell)
        for start in range(0, len(group), per_batch):
            chunk = group[start : start + per_batch]
            ids = torch.tensor([base.run_ids(work, c.prompt) for c in chunk]).repeat_interleave(S, dim=0)
            riding = [c.prompt for c in chunk if c.prompt in riders]
            n = len(ids)
            if riding:
                ids = torch.cat([ids, torch.tensor([riders[p] for p in riding])])
            patched = engine.patches.build(chunk)
            with (
                hooks.patching(work.lm.model, patched.patches),
                hooks.capturing(work.lm.model, sites) as store,
            ):
                logits, cache = state.baseline_forward(ids)
            for i, cell in enumerate(chunk):
                for key, site in wanted.items():
                    acts[key][cell.prompt] = store[site][i * S : (i + 1) * S]
            for row, prompt in enumerate(riding, start=n):
                base.source_logits[prompt] = work.scoring.captured(prompt, riders[prompt], logits[row].cpu())
                for key, site in source_sites.items():
                    base.source_acts[key][prompt] = store[site][row]
            state.keep(chunk, cache, store, state_sites)
            outputs(engine, chunk, logits[:n])
    return acts


def outputs(
    engine: Engine, chunk: list[Cell], logits: torch.Tensor, patched: PatchSet | None = None
) -> list[CellOutput]:
    """The outputs of a batch's cells; corrupted-baseline cells (index < 0) store their logits instead."""
    work = engine.work
    S = work.samples
    logits = work.scoring.ran(chunk, logits, S)
    last = logits if logits.dim() == 2 else logits[:, -1]
    if all(c.index < 0 for c in chunk):  # corrupted baselines: kept, no metric rows
        for i, cell in enumerate(chunk):
            engine.base.corrupt_logits[cell.prompt] = last[i * S : (i + 1) * S].cpu()
        return []
    values = engine.rows.batch_values(chunk, last)
    collected = patched.collected(S) if patched is not None else {}
    out = []
    for i, cell in enumerate(chunk):
        rows = slice(i * S, (i + 1) * S)
        if cell.index < 0:  # corrupted baseline
            engine.base.corrupt_logits[cell.prompt] = last[rows].cpu()
            continue
        mean = {k: float(v[rows].mean()) for k, v in values.items()}
        row = engine.rows.row(cell, mean, last[rows])
        out.append(CellOutput(cell, row, logits[rows].mean(0).cpu(), collected.get(cell.index, {})))
    return out


# ---- scheduling ---------------------------------------------------------------------------------
def _schedule(engine: Engine, cells: list[Cell]) -> list[tuple[list[Cell], int, list[int]]]:
    """Forwards (cells, reused prefix, entry block per cell) of the cells that need one.

    Per prompt length, cells continue from the baseline's KV cache after their first edited
    position and enter the block stack at their first edited layer (`stagger`); runs of
    neighbouring prefixes share a forward where the cost model says a block's fixed cost
    outweighs recomputing the positions between them (`schedule.stagger`).
    """
    work, state = engine.work, engine.state
    by_len: dict[int, list[Cell]] = defaultdict(list)
    for cell in cells:
        by_len[work.length(cell)].append(cell)
    reuse = state.on("prefix_reuse") or state.on("layer_reuse")
    cost = state.cost() if reuse else schedule.Cost(1.0, 0.0)
    out: list[tuple[list[Cell], int, list[int]]] = []
    for length, group in sorted(by_len.items()):
        keys = [(state.prefix(c), state.entry(c)) for c in group]
        rows = work.batch_rows(length - min(p for p, _ in keys))
        forwards, seconds = schedule.stagger(
            keys, work.lm.info.n_layers, work.samples, length, rows, cost, recompute=state.recurrent
        )
        record = _group(state, length)
        record["packing"] = "prefix_reuse" if any(f.prefix for f in forwards) else "full"
        record["staggered"] = any(keys[f.cells[0]][1] != keys[f.cells[-1]][1] for f in forwards)
        record["estimated_seconds"] = round(seconds, 4)
        for f in forwards:
            out.append(([group[i] for i in f.cells], f.prefix, [keys[i][1] for i in f.cells]))
    return out


def _group(state: ShortcutState, length: int) -> dict[str, Any]:
    """The report's record of the cells of one prompt length: what ran, and how."""
    groups: list[dict[str, Any]] = state.report["groups"]
    for group in groups:
        if group["length"] == length:
            return group
    group = {
        "length": length,
        "cells": 0,
        "noop_cells": 0,
        "forwards": 0,
        "cells_after_prefix": 0,
        "cells_skipping_blocks": 0,
    }
    groups.append(group)
    groups.sort(key=lambda g: g["length"])
    return group


def _count(state: ShortcutState, length: int, cells: int, prefix: int, entries: tuple[int, ...]) -> None:
    group = _group(state, length)
    group["cells"] += cells
    group["forwards"] += 1
    group["cells_after_prefix"] += cells if prefix else 0
    group["cells_skipping_blocks"] += sum(1 for e in entries if e)
