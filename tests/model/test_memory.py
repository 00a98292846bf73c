"""Rows per forward from a per-device memory budget; patch tensors follow the hooked module's device."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from ivx.core import interventions
from ivx.model import hooks, memory
from ivx.model.components import ModelInfo, Site

GiB = 2**30


def info() -> ModelInfo:
    return shape(n_layers=32, d_model=4096, n_heads=32, d_mlp=11008, vocab_size=32000)


def shape(n_layers: int, d_model: int, n_heads: int, d_mlp: int, vocab_size: int) -> ModelInfo:
    return ModelInfo(
        "llama",
        "model.layers",
        n_layers,
        d_model,
        n_heads,
        n_heads,
        d_model // n_heads,
        d_mlp,
        vocab_size,
        (),
    )


class FakeModel(torch.nn.Module):
    """A model sharded by accelerate over two GPUs, without GPUs: only what `memory` reads."""

    def __init__(self, placed: dict[str, Any], weights: dict[str, int]) -> None:
        super().__init__()
        self.hf_device_map = placed
        self.weights = weights  # bytes per device

    def parameters(self, recurse: bool = True) -> Any:  # type: ignore[override]
        return iter(
            [
                SimpleNamespace(device=torch.device(d), numel=lambda n=n: n, element_size=lambda: 1)
                for d, n in self.weights.items()
            ]
        )

    def buffers(self, recurse: bool = True) -> Any:  # type: ignore[override]
        return iter([])


def loaded(model: Any, dtype: torch.dtype, device: str = "cuda:0") -> Any:
    return SimpleNamespace(model=model, info=info(), dtype=dtype, device=torch.device(device))


def test_row_bytes_by_hand() -> None:
    # llama-7B shape, 20 tokens, bfloat16 activations, last-position float32 logits
    expected = 2 * 20 * (8 * 4096 + 2 * 11008 + 32 * 20) + 4 * 32000
    assert memory.row_bytes(info(), 20, 2) == expected
    assert (
        memory.row_bytes(info(), 20, 4, logit_positions=20)
        == 4 * 20 * (8 * 4096 + 2 * 11008 + 640) + 4 * 32000 * 20
    )


def test_auto_budget_on_two_gpus_is_the_tightest_and_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    free = {0: 30 * GiB, 1: 9 * GiB}  # GPU 1 is shared with another process
    total = 40 * GiB
    calls: list[int] = []

    def mem_get_info(device: torch.device) -> tuple[int, int]:
        calls.append(device.index)
        return free[device.index], total

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    model = FakeModel(
        {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 1, "lm_head": 1},
        {"cuda:0": 14 * GiB, "cuda:1": 13 * GiB},
    )
    lm = loaded(model, torch.bfloat16)
    batch = SimpleNamespace(size="auto", memory_gb="auto")
    # GPU 0: 0.6 × min(30, 40 − 14) GiB = 15.6 GiB; GPU 1: 0.6 × min(9, 40 − 13) = 5.4 GiB → 5.25 GiB
    budget = 21 * 2**28
    assert memory.budget_bytes("auto", lm) == budget
    per_row = memory.row_bytes(info(), 300, 2)
    assert memory.batch_rows(batch, "last", lm, 300) == budget // per_row < memory.MAX_ROWS
    assert memory.batch_rows(batch, "last", lm, 300) == budget // per_row
    assert sorted(calls) == [0, 1]  # free memory read once per device, then kept for the run
    fp32 = loaded(FakeModel(model.hf_device_map, model.weights), torch.float32)
    assert memory.batch_rows(batch, "last", fp32, 300) < memory.batch_rows(batch, "last", lm, 300)


def test_configured_budget_and_size_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: pytest.fail("auto budget read"))
    lm = loaded(FakeModel({"": 0}, {}), torch.float16)
    per_row = memory.row_bytes(info(), 100, 2, 100)
    assert (
        memory.batch_rows(SimpleNamespace(size="auto", memory_gb=3.0), "all", lm, 100) == 3 * GiB // per_row
    )
    assert memory.batch_rows(SimpleNamespace(size=7, memory_gb="auto"), "last", lm, 100) == 7


def test_cpu_rows_capped_by_tokens() -> None:
    small = shape(n_layers=2, d_model=32, n_heads=4, d_mlp=64, vocab_size=100)
    lm = SimpleNamespace(
        model=torch.nn.Linear(2, 2), info=small, dtype=torch.float32, device=torch.device("cpu")
    )
    batch = SimpleNamespace(size="auto", memory_gb="auto")
    assert memory.batch_rows(batch, "last", lm, 13) == memory.CPU_TOKENS // 13
    assert memory.budget_bytes("auto", lm) == min(2 * GiB, memory.cpu_bytes())


def test_devices_of_a_device_map() -> None:
    model = SimpleNamespace(hf_device_map={"a": 0, "b": "cuda:1", "c": "cpu", "d": "disk", "e": 0})
    assert memory.devices(model, torch.device("cpu")) == [
        torch.device("cuda:0"),
        torch.device("cuda:1"),
        torch.device("cpu"),
    ]
    assert memory.devices(SimpleNamespace(), torch.device("cpu")) == [torch.device("cpu")]


def test_patch_tensors_follow_the_hooked_module_device() -> None:
    """A sharded model's block runs on its own device: rows, positions and source values built on
    the input device must reach the edit function on the activation's device (here `meta`)."""
    site = Site("block_output", 0, "m", "output", groups=1, width=4, lo=0, hi=4, n_heads=1)
    seen: list[tuple[torch.device, torch.device]] = []

    def fn(current: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
        assert source is not None
        seen.append((current.device, source.device))
        return interventions.vanilla(current, source)

    patch = hooks.Patch(
        site=site, rows=torch.tensor([0, 1]), positions=torch.tensor([2, 0]), fn=fn, source=torch.ones(2, 4)
    )
    raw = torch.zeros(2, 3, 4, device="meta")
    out = hooks.apply(site, raw, [patch])
    assert out.device.type == "meta" and seen == [(torch.device("meta"), torch.device("meta"))]
    rows, positions, source = hooks.placed(torch.device("cpu"), patch.rows, patch.positions, patch.source)
    assert (
        rows is patch.rows and positions is patch.positions and source is patch.source
    )  # no copy on the same device
    cpu = hooks.apply(site, torch.zeros(2, 3, 4), [patch])
    assert cpu[0, 2].tolist() == [1.0] * 4 and cpu[1, 0].tolist() == [1.0] * 4 and float(cpu.sum()) == 8.0
