"""Rough cost of a plan before it runs: cells, peak memory and run time on this machine.

Estimates, not promises: memory counts the model's parameters, the plan's cells, one batch of
activations and the merged logits; time counts ~2 × parameters FLOPs per token of every forward
row at the matrix-multiply rate measured here once per process.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ivx.model import memory

if TYPE_CHECKING:
    from ivx.plan.prepared import Prepared

CELL_BYTES = 1200  # measured: a 1.35M-cell plan held ~1.6 GB before any cell ran
_FLOPS: list[float] = []


def flops_per_second() -> float:
    """float32 matrix-multiply rate of this machine (measured once, ~0.1 s)."""
    if not _FLOPS:
        import torch

        a = torch.randn(256, 256)
        torch.mm(a, a)  # warm up
        best = 0.0
        for _ in range(5):  # the best of five short windows: a busy machine only slows some
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < 0.02:
                torch.mm(a, a)
                n += 1
            best = max(best, 2 * 256**3 * n / (time.perf_counter() - t0))
        _FLOPS.append(best)
    return _FLOPS[0]


def forward_rows(preps: list[Any]) -> int:
    """Sequences the plan pushes through the model (cells × noise samples)."""
    rows = 0
    for prep in preps:
        corrupt = prep.cfg.experiment.corrupt
        samples = corrupt.samples if corrupt is not None and corrupt.kind == "noise" else 1
        rows += len(prep.plan.cells) * samples
    return rows


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


def seconds(preps: list[Any]) -> float:
    """Forward FLOPs of every row (the exact shortcuts only make it faster) over the measured rate."""
    tokens = sum(p.length for p in preps[0].prompts) / max(len(preps[0].prompts), 1)
    return 2 * parameters(preps[0].lm) * tokens * forward_rows(preps) / flops_per_second()


def human_time(s: float) -> str:
    """Seconds as s / min / h."""
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def describe(preps: list[Any], tensor_bytes: int) -> str:
    """One line: peak memory and run time estimates."""
    return (
        f"peak memory ~{human_size(peak_bytes(preps, tensor_bytes))}, "
        f"run time ≤ ~{human_time(seconds(preps))} on this machine (without exact shortcuts)"
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
