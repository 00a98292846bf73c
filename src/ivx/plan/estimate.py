"""What a plan will cost before it runs: cells, peak memory and run time on this machine.

Estimates, not promises. Memory counts the model's parameters, the plan's cells, one batch of
activations and the merged logits. Run time prices the forwards with the cost model the run packs
its cells with (`schedule.device_cost`, `schedule.stagger`): per prompt length, every cell that
needs a forward continues after its reusable prefix and enters the blocks at its first edited
layer, exactly as `engine.shortcut_state` will decide when the exact shortcuts engage (they do
unless the config turns them off; only the probe on the weights can still switch one off); no-op
cells need no forward; the LM head runs once per row. Around the forwards: start-up (imports,
model load), the baselines, per-cell bookkeeping (patches, metrics, result rows) and figures,
priced by constants measured on a 2-core x86 CPU.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ivx.model import components, memory, skeleton
from ivx.plan import schedule

if TYPE_CHECKING:
    from ivx.plan.grid import Cell
    from ivx.plan.prepared import Prepared

CELL_BYTES = 1200  # measured: a 1.35M-cell plan held ~1.6 GB before any cell ran

# What the cost model does not price, set from the shipped configs' runs on the 2-core x86 CPU
# (ivx-toy, OMP_NUM_THREADS=1, load ~1). Start-up is importing torch and transformers and loading
# the model; on a busy machine every part takes longer.
START_S = 5.0
READ_BYTES_PER_S = 2e8  # weights read at start-up
CELL_S = 4e-4  # per cell: planning, its patches, metrics and result row (also for no-op cells)
LOGIT_S = 1e-8  # per logit of a row's [vocab] metrics (log-softmax, top-k, ...)
FIGURE_S = 1.0  # per figure written (matplotlib)
GRADIENT_FORWARDS = 3  # attribution: a forward and a backward per prompt cost ~3 forwards


@dataclass(frozen=True)
class Seconds:
    """Estimated seconds of one run, by part."""

    start: float  # imports, model load
    baselines: float  # clean, corrupted and source runs of every prompt
    forwards: float  # the cells' forwards as the run packs them (`schedule.stagger`)
    head: float  # the LM head and metrics over every cell's rows
    cells: float  # per-cell bookkeeping (patches, result rows)
    figures: float

    @property
    def total(self) -> float:
        """The whole run."""
        return self.start + self.baselines + self.forwards + self.head + self.cells + self.figures


def forward_rows(preps: list[Any]) -> int:
    """Sequences the plan pushes through the model (cells × noise samples)."""
    return sum(len(prep.plan.cells) * samples(prep) for prep in preps)


def samples(prep: Any) -> int:
    """Rows per cell: the noise samples, else 1."""
    corrupt = prep.cfg.experiment.corrupt
    return corrupt.samples if corrupt is not None and corrupt.kind == "noise" else 1


def parameters(lm: Any) -> int:
    """Parameter count (works on the meta device: no weights needed)."""
    return sum(p.numel() for p in lm.model.parameters())


def peak_bytes(preps: list[Any], tensor_bytes: int) -> int:
    """Model weights + plan + one batch of activations (as the runner sizes it, capped by
    batch.memory_gb) + merged logits (held twice while merging)."""
    exp = preps[0].cfg.experiment
    lm = preps[0].lm
    element = memory.DTYPE_BYTES.get(exp.model.dtype, 4)  # auto: float32 on a CPU, an upper bound elsewhere
    weights = parameters(lm) * element
    cells = sum(len(p.plan.cells) for p in preps)
    info = lm.info
    length = max((p.length for p in preps[0].prompts), default=1)
    per_row = memory.row_bytes(info, length, element)
    batch = min(memory.nominal_bytes(exp.batch.memory_gb), per_row * forward_rows(preps))  # runner's budget
    return weights + cells * CELL_BYTES + batch + 2 * tensor_bytes


# ---- run time -----------------------------------------------------------------------------------
def device(exp: Any) -> str:
    """The device type the run will use (`model.device`; auto: cuda when available)."""
    name = str(exp.model.device)
    if exp.model.device_map is not None or name.startswith("cuda"):
        return "cuda"
    if name == "auto":
        return "cuda" if skeleton.cuda_available() else "cpu"
    return name


def cost(prep: Any) -> schedule.Cost:
    """The run's cost model: this model's first block on the run's device (as `shortcuts.estimate`)."""
    exp = prep.cfg.experiment
    params = sum(p.numel() for p in components.blocks(prep.lm.model)[0].parameters())
    return schedule.device_cost(params, memory.DTYPE_BYTES.get(exp.model.dtype, 4), device(exp))


def engaged(prep: Any) -> set[str]:
    """The exact shortcuts the run will use by its config (`engine.shortcut_state.config_reasons`)."""
    exp = prep.cfg.experiment
    batch, info = exp.batch, prep.lm.info
    if exp.answer == "full" or exp.output.logits == "all":
        return set()
    on = {name for name in ("prefix_reuse", "skip_noop", "defer_head") if getattr(batch, name)}
    state_bytes = sum(4 * info.n_layers * samples(prep) * p.length * info.d_model for p in prep.prompts)
    if (
        batch.layer_reuse
        and batch.prefix_reuse
        and state_bytes < memory.budget_bytes(batch.memory_gb, prep.lm) / 2
    ):
        on.add("layer_reuse")
    return on


def batch_rows(prep: Any, length: int) -> int:
    """Rows per forward on the run's device (`memory.batch_rows`, with the run's device and scoring)."""
    exp = prep.cfg.experiment
    if exp.batch.size != "auto":
        rows = int(exp.batch.size)
    else:
        element = memory.DTYPE_BYTES.get(exp.model.dtype, 4)
        per_row = memory.row_bytes(prep.lm.info, length, element, length if exp.output.logits == "all" else 1)
        rows = min(memory.MAX_ROWS, memory.budget_bytes(exp.batch.memory_gb, prep.lm) // per_row)
        if device(exp) == "cpu":
            rows = min(rows, memory.CPU_TOKENS // max(1, length))
    return max(1, rows // length if exp.answer == "full" else rows)


def _noop(prep: Any, cell: Cell, divergence: dict[tuple[int, str], int]) -> bool:
    """Whether a cell copies what its sites already hold (`ShortcutState.noop`, from token ids)."""
    for e in cell.edits:
        if e.kind != "vanilla" or e.source_positions != e.positions or e.vector is not None:
            return False
        if e.source == "corrupted":
            continue
        if e.source not in ("base", "source") or max(e.positions) >= divergence[(cell.prompt, e.source)]:
            return False
    return bool(cell.edits)


def _divergences(prep: Any) -> dict[tuple[int, str], int]:
    """Per prompt and source run, the first position where the cells' input can differ from it."""
    out = {}
    for p in prep.prompts:
        corrupted = (
            set(prep.plan.corrupt_positions[p.index]) if p.index < len(prep.plan.corrupt_positions) else set()
        )
        for source, ids in (("base", p.base_ids), ("source", p.source_ids)):
            if ids is None or len(ids) != p.length:
                out[(p.index, source)] = 0
                continue
            differ = {i for i, (a, b) in enumerate(zip(p.base_ids, ids, strict=True)) if a != b} | corrupted
            out[(p.index, source)] = min(differ, default=p.length)
    return out


def _scheduled(prep: Any, c: schedule.Cost) -> tuple[float, int]:
    """(seconds, rows) of the forwards of an exact run's cells, packed as the run packs them."""
    on = engaged(prep)
    divergence = _divergences(prep) if "skip_noop" in on else {}
    lengths = {p.index: p.length for p in prep.prompts}
    by_len: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for cell in prep.plan.cells:
        if "skip_noop" in on and _noop(prep, cell, divergence):
            continue
        edits = cell.edits
        prefix = min(min(e.positions) for e in edits) if edits and "prefix_reuse" in on else 0
        entry = (
            min(0 if e.component == "embedding" else e.layer + (e.component == "block_output") for e in edits)
            if edits and "layer_reuse" in on
            else 0
        )
        by_len[lengths[cell.prompt]].append((prefix, entry))
    total, rows = 0.0, 0
    for length, keys in sorted(by_len.items()):
        per_forward = batch_rows(prep, length - min(p for p, _ in keys))
        total += schedule.stagger(keys, prep.lm.info.n_layers, samples(prep), length, per_forward, c)[1]
        rows += len(keys) * samples(prep)
    return total, rows


def _plain(prep: Any, lengths: list[int], rows_per_cell: int, c: schedule.Cost) -> float:
    """Seconds of full forwards (no shortcuts) of one sequence per entry of `lengths`."""
    total = 0.0
    for length in sorted(set(lengths)):
        keys = [(0, 0)] * lengths.count(length)
        per_forward = batch_rows(prep, length)
        total += schedule.stagger(keys, prep.lm.info.n_layers, rows_per_cell, length, per_forward, c)[1]
    return total


def _figures(prep: Any) -> int:
    """Figures the run writes: a causal trace's averages and per-prompt panels, else one per metric."""
    exp = prep.cfg.experiment
    if not exp.output.plots or not prep.plan.axes:
        return 0
    if "layer" in prep.plan.axes and "position" in prep.plan.axes:
        return 2 + min(len(prep.prompts), exp.trace.plots_per_fact if exp.trace else 3)
    return len([m for m in exp.metrics if m != "top_k"])


def seconds(preps: list[Prepared]) -> Seconds:
    """Run time of the plan on this machine, by part (see the module docstring)."""
    exp, lm = preps[0].cfg.experiment, preps[0].lm
    info = lm.info
    start = START_S + parameters(lm) * memory.DTYPE_BYTES.get(exp.model.dtype, 4) / READ_BYTES_PER_S
    flops = schedule.DEVICE_COST.get(device(exp), schedule.DEVICE_COST["cuda"])["flops_per_s"]
    per_row = 2 * info.d_model * info.vocab_size / flops + info.vocab_size * LOGIT_S  # head + metrics
    baselines = forwards = head = cells = 0.0
    figures = 0
    for prep in preps:
        c, S = cost(prep), samples(prep)
        lengths = [p.length for p in prep.prompts] or [1]
        clean_runs = 2 if exp.trace is not None and exp.trace.select_correct else 1  # + fact selection
        baselines += clean_runs * _plain(prep, lengths, 1, c)
        baselines += _plain(prep, lengths, S, c) if prep.cfg.experiment.corrupt is not None else 0.0
        baselines += _plain(prep, [p.length for p in prep.prompts if p.source_ids is not None], 1, c)
        n = len(prep.plan.cells)
        if any(iv.receivers for iv in exp.interventions):  # path patching: two forwards per cell
            by_prompt = {p.index: p.length for p in prep.prompts}
            cell_lengths = [by_prompt[cell.prompt] for cell in prep.plan.cells]
            forwards += 2 * _plain(prep, cell_lengths, S, c)
        elif exp.method == "attribution":  # a gradient per prompt, then the verified cells exactly
            verify = exp.attribution.verify
            checked = min(n, verify.top_k + verify.random) if verify is not None else 0
            forwards += GRADIENT_FORWARDS * _plain(prep, lengths, S, c)
            forwards += _plain(prep, [max(lengths)] * checked, S, c)
        else:
            forwards += _scheduled(prep, c)[0]
        head += n * S * per_row
        cells += n * CELL_S
        figures += _figures(prep)
    return Seconds(start, baselines, forwards, head, cells, figures * FIGURE_S)


def human_time(s: float) -> str:
    """Seconds as s / min / h."""
    if s < 10:
        return f"{s:.1f} s"
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def describe(preps: list[Any], tensor_bytes: int) -> str:
    """One line: peak memory and run time estimates."""
    time = seconds(preps)
    rest = time.total - time.forwards - time.baselines
    return (
        f"peak memory ~{human_size(peak_bytes(preps, tensor_bytes))}, run time ~{human_time(time.total)} "
        f"on this machine (estimated with the run's cost model: forwards {human_time(time.total - rest)} "
        f"with the exact shortcuts it expects, start-up, bookkeeping and figures {human_time(rest)})"
    )


LARGE_TENSORS = 2 * 2**30  # bytes of tensors.safetensors above which a run warns first


def tensor_bytes(preps: list[Prepared]) -> int:
    """Approximate size of the run's tensors.safetensors (float32 logits; collected activations
    not counted): per-cell logits per `output.logits`, plus the baselines."""
    exp = preps[0].cfg.experiment
    if exp.output.logits == "none":
        return 0
    vocab = preps[0].lm.info.vocab_size
    total = 0
    for prep in preps:
        lengths = {p.index: p.length for p in prep.prompts}
        per_cell = [lengths[c.prompt] if exp.output.logits == "all" else 1 for c in prep.plan.cells]
        total += 4 * vocab * (sum(per_cell) + 3 * len(prep.prompts))
    return total


def human_size(n: float) -> str:
    """Bytes as B / KB / MB / GB."""
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KB", "MB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} GB"


def size_warning(preps: list[Prepared]) -> str | None:
    """A warning when `output.logits` would write (and merge in memory) a very large file."""
    size = tensor_bytes(preps)
    if size <= LARGE_TENSORS:
        return None
    logits = preps[0].cfg.experiment.output.logits
    return (
        f"output.logits: {logits} keeps full-vocabulary logits for every cell: tensors.safetensors "
        f"will be ~{human_size(size)}. Metrics need none of it; set `output.logits: none` unless you "
        "want the logits themselves."
    )
