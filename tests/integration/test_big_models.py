"""Big-model settings on CPU: a model sharded by `model.device_map` and a bfloat16 model.

No GPU here, so sharding is tested with accelerate's disk offload: blocks mapped to `disk` run
through accelerate's device hooks (weights read back per forward) exactly as blocks on a second
GPU would, and the results must equal the single-device run bit for bit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ivx import experiment, models, shortcuts
from ivx.schedule import Cost

BASE = "When Mary and John went to the store , John gave a drink to"
SOURCE = "When Mary and John went to the store , Mary gave a drink to"

pytest.importorskip("accelerate")


def run(tmp_path: Path, model: dict, body: dict, name: str) -> Path:
    data = {
        "name": name,
        "model": model,
        "prompts": [{"base": BASE, "source": SOURCE, "target": " Mary", "foil": " John"}],
        "metrics": ["target_prob", "logit_diff", "kl"],
        "output": {"plots": False},
        **body,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return experiment.run(path, out_root=str(tmp_path / "runs"), progress=False)


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]


PATCH_SWEEP = {
    "sweep": {"layer": "all", "position": "all"},
    "interventions": [
        {"kind": "vanilla", "component": "block_output", "layer": "$layer", "position": "$position"},
        {"kind": "addition", "component": "mlp_output", "layer": 0, "position": "last", "coefficient": 0.5},
    ],
}
TRACE = {
    "prompts": [
        {"base": "In the old records , Space Needle is located in the city of", "subject": "Space Needle", "target": " Seattle"}
    ],
    "metrics": ["target_prob", "indirect_effect"],
    "corrupt": {"kind": "noise", "positions": "subject", "samples": 2},
    "sweep": {"layer": "all", "position": "all"},
    "interventions": [
        {"kind": "vanilla", "component": "block_output", "layer": "$layer", "position": "$position"}
    ],
}


def split_map(arch_dir: Path) -> dict[str, str]:
    """A per-module map: every module on cpu except the last decoder block, which goes to disk."""
    from ivx import components

    lm = models.load(str(arch_dir), weights=False)
    blocks = components.blocks(lm.model)
    path = next(n for n, m in lm.model.named_modules() if m is blocks[-1]).rsplit(".", 1)[0]
    backbone, _, list_name = path.rpartition(".")
    placed = {f"{path}.{i}": "cpu" for i in range(len(blocks))}
    placed[f"{path}.{len(blocks) - 1}"] = "disk"
    for name, _ in lm.model.get_submodule(backbone).named_children():
        if name != list_name:
            placed[f"{backbone}.{name}"] = "cpu"
    for name, _ in lm.model.named_children():
        if name != backbone:
            placed[name] = "cpu"
    return placed


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("body", [PATCH_SWEEP, TRACE], ids=["patch", "trace"])
def test_sharded_model_equals_single_device(
    arch: str, body: dict, tiny_model_dir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the cost model of a compute-bound device, so that cells continue from the KV cache of
    their prefix and skip blocks below their first edit (the shortcuts accelerate's hooks could break)."""
    monkeypatch.setattr(shortcuts, "estimate", lambda lm: Cost(block=1e-9, token=1.0))
    model_dir = tiny_model_dir(arch)
    plain = run(tmp_path, {"name": str(model_dir)}, body, "plain")
    sharded = run(tmp_path, {"name": str(model_dir), "device_map": split_map(model_dir)}, body, "sharded")
    assert rows(plain) == rows(sharded)
    a, b = load_file(str(plain / "tensors.safetensors")), load_file(str(sharded / "tensors.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    report = json.loads((sharded / "manifest.json").read_text())["shortcuts"]
    assert all(value["on"] for value in report["shortcuts"].values()), report["shortcuts"]
    assert sum(g["cells_after_prefix"] for g in report["groups"]) > 0
    if body is TRACE:  # blocks are skipped where the corrupted run's block outputs are kept
        assert sum(g["cells_skipping_blocks"] for g in report["groups"]) > 0


def test_offloaded_block_runs_through_accelerate_hooks(tiny_model_dir) -> None:
    model_dir = tiny_model_dir("gpt2")
    lm = models.load(str(model_dir), device_map=split_map(model_dir))
    last = lm.model.transformer.h[-1]
    assert hasattr(last, "_hf_hook") and last.mlp.c_fc.weight.device.type == "meta"
    assert lm.device == torch.device("cpu")
    auto = models.load(str(model_dir), device_map="auto")
    # no GPU: auto places every weight on the CPU (transformers then records no hf_device_map)
    assert {p.device.type for p in auto.model.parameters()} == {"cpu"} and auto.device == torch.device("cpu")


def test_bfloat16_close_to_float32_and_metrics_in_float32(tmp_path: Path) -> None:
    """ivx-toy in bfloat16 vs float32, ROME-style trace: bfloat16 keeps 8 significant bits (relative
    rounding 2^-9 per operation), which after 4 blocks and the unembedding moves logits by a few
    hundredths; probabilities move by at most p·Δlogit, so 0.03 absolute bounds target_prob."""
    body = {
        "prompts": [{"base": "The Zorvan Tower is located in the city of", "subject": "The Zorvan Tower", "target": " Trelin"}],
        "corrupt": {"kind": "noise", "positions": "subject", "samples": 2},
        "sweep": {"layer": "all", "position": "all"},
        "interventions": [{"kind": "vanilla", "component": "block_output", "layer": "$layer", "position": "$position"}],
        "metrics": ["target_prob", "indirect_effect"],
    }
    full = rows(run(tmp_path, {"name": "ivx-toy", "dtype": "float32"}, body, "fp32"))
    half_dir = run(tmp_path, {"name": "ivx-toy", "dtype": "bfloat16"}, body, "bf16")
    half = rows(half_dir)
    assert json.loads((half_dir / "manifest.json").read_text())["dtype"] == "bfloat16"
    assert len(full) == len(half) > 0
    diffs = [abs(f["target_prob"] - h["target_prob"]) for f, h in zip(full, half, strict=True)]
    assert all(math.isfinite(h["target_prob"]) and math.isfinite(h["indirect_effect"]) for h in half)
    assert max(diffs) < 0.03, max(diffs)
    assert max(diffs) > 0  # the bfloat16 model really ran in bfloat16
    tensors = load_file(str(half_dir / "tensors.safetensors"))
    assert {t.dtype for t in tensors.values()} == {torch.float32}
