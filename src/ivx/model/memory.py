"""How many rows go through one forward pass: an activation budget per device, over bytes per row.

The budget is `batch.memory_gb` GiB, or with `auto`: on a GPU, 60% of the memory the weights
leave (`torch.cuda.mem_get_info`, the smaller of free memory and total minus this model's weights
on that device, rounded down to 256 MiB so run-to-run noise in free memory does not change the
packing); with a model sharded by `device_map`, the tightest of its GPUs, since every block's
activations pass through each device in turn. On a CPU it is 2 GiB, at most a quarter of the RAM,
and rows are further capped at `CPU_TOKENS` tokens per forward (larger batches fall out of the CPU
caches and run slower). A row's bytes are its activations at the model's dtype (hidden states,
MLP, attention scores) plus its float32 logits.
"""

from __future__ import annotations

import os
import weakref
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

    from ivx.model.components import ModelInfo
    from ivx.model.loading import LoadedModel

MAX_ROWS = 512  # rows per forward (and rows of [vocab] logits held at once) on any device
CPU_TOKENS = 2048  # tokens per forward on a CPU (measured: 64 rows of 32 beat 512 rows)
CPU_DEFAULT_BYTES = 2 * 2**30
GPU_FRACTION = 0.6  # of the memory left after the weights: headroom for the allocator and kernels
GRANULE = 256 * 2**20
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}  # model.dtype → bytes per element
# one auto budget per loaded model and setting: free memory is read once, so every batch of a
# run is sized alike
_BUDGETS: weakref.WeakKeyDictionary[Any, dict[float | str, int]] = weakref.WeakKeyDictionary()


def row_bytes(info: ModelInfo, length: int, element_bytes: int, logit_positions: int = 1) -> int:
    """Peak activation bytes of one row of `length` tokens, plus its float32 logits."""
    d_mlp = info.d_mlp or 4 * info.d_model
    hidden = element_bytes * length * (8 * info.d_model + 2 * d_mlp + info.n_heads * length)
    return hidden + 4 * info.vocab_size * logit_positions


def nominal_bytes(memory_gb: float | Literal["auto"]) -> int:
    """The budget before a model is loaded: the configured GiB, or the CPU default for auto."""
    return CPU_DEFAULT_BYTES if memory_gb == "auto" else int(memory_gb * 2**30)


def cpu_bytes() -> int:
    """Auto budget on a CPU: 2 GiB, at most a quarter of the physical memory."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not a POSIX system: keep the default
        return CPU_DEFAULT_BYTES
    return min(CPU_DEFAULT_BYTES, ram // 4)


def gpu_bytes(device: torch.device, weights: int) -> int:
    """Auto budget on one GPU: 60% of min(free, total - weights), in whole 256 MiB granules."""
    import torch

    free, total = torch.cuda.mem_get_info(device)
    left = max(0, min(free, total - weights))
    return max(GRANULE, int(GPU_FRACTION * left) // GRANULE * GRANULE)


def devices(model: Any, default: torch.device) -> list[torch.device]:
    """Devices that run the model's modules: its device_map's (disk and cpu offload run on
    their execution device, which accelerate reports in the map as cpu/disk), else `default`."""
    placed = getattr(model, "hf_device_map", None) or {}
    found: list[torch.device] = []
    for where in placed.values():
        if where == "disk":
            continue
        import torch  # only for a sharded model: `ivx validate` starts without torch

        device = torch.device(f"cuda:{where}" if isinstance(where, int) else where)
        if device not in found:
            found.append(device)
    return found or [default]


def weight_bytes(model: Any, device: torch.device) -> int:
    """Bytes of the parameters and buffers that live on `device`."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors if t.device == device)


def budget_bytes(memory_gb: float | Literal["auto"], lm: LoadedModel) -> int:
    """Activation budget per device for this loaded model (see the module docstring)."""
    if memory_gb != "auto":
        return int(memory_gb * 2**30)
    known = _BUDGETS.setdefault(lm.model, {})
    if memory_gb not in known:
        gpus = [d for d in devices(lm.model, lm.device) if d.type == "cuda"]
        gpu = [gpu_bytes(d, weight_bytes(lm.model, d)) for d in gpus]
        known[memory_gb] = min(gpu) if gpu else cpu_bytes()
    return known[memory_gb]


def batch_rows(batch: Any, logits: str, lm: LoadedModel, length: int) -> int:
    """Rows per forward for prompts of `length` tokens: `batch.size`, or from the budget."""
    if batch.size != "auto":
        return int(batch.size)
    import torch

    element = torch.empty((), dtype=lm.dtype).element_size()
    per_row = row_bytes(lm.info, length, element, length if logits == "all" else 1)
    rows = min(MAX_ROWS, budget_bytes(batch.memory_gb, lm) // per_row)
    if all(d.type == "cpu" for d in devices(lm.model, lm.device)):
        rows = min(rows, CPU_TOKENS // max(1, length))
    return max(1, rows)
