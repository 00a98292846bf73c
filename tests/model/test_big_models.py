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

from ivx.engine import shortcuts
from ivx.model import loading as models
from ivx.plan.schedule import Cost
from ivx.recipes import run as experiment

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
    """Result rows by cell: results.jsonl is in execution order, which follows the packing (and
    the packing follows the cost model, which differs between dtypes)."""
    found = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    return sorted(found, key=lambda r: r["cell"])


PATCH_SWEEP = {
    "sweep": {"layer": "all", "position": [1, 4, 9, -1]},
    "interventions": [
        {"kind": "vanilla", "component": "block_output", "layer": "$layer", "position": "$position"},
        {"kind": "addition", "component": "mlp_output", "layer": 0, "position": "last", "coefficient": 0.5},
    ],
}
TRACE = {
    "prompts": [
        {
            "base": "In the old records , Space Needle is located in the city of",
            "subject": "Space Needle",
            "target": " Seattle",
        }
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
    from ivx.model import components

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
    manifest = json.loads((sharded / "manifest.json").read_text())
    assert (
        manifest["device"] == "cpu,disk"
        and json.loads((plain / "manifest.json").read_text())["device"] == "cpu"
    )
    report = manifest["shortcuts"]
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


FACTS = Path(__file__).resolve().parents[2] / "configs" / "data" / "facts.jsonl"


def test_half_precision_close_to_float32_and_metrics_in_float32(tmp_path: Path) -> None:
    """ivx-toy's causal trace in bfloat16 and float16 against float32.

    Tolerances from the formats: a half-precision model keeps unit roundoff u (bfloat16 2^-8,
    float16 2^-11) per operation, so logits of magnitude ≤ 20 (ivx-toy's reach 17) move by about
    2u·20 at most: 0.16 (bfloat16), 0.02 (float16). A softmax probability moves by at most half the
    largest logit change (∂p/∂z is bounded by p(1-p) ≤ 1/4 per logit, for the target's and the
    normaliser's): 0.08 and 0.01. Measured here: 0.041 / 0.0074 (bfloat16), 0.0058 / 0.0009 (float16).
    """
    body = {
        "prompts": {"file": str(FACTS), "limit": 3},
        "corrupt": {"kind": "noise", "positions": "subject", "samples": 2},
        "sweep": {"layer": "all", "position": "all"},
        "interventions": [
            {"kind": "vanilla", "component": "block_output", "layer": "$layer", "position": "$position"}
        ],
        "metrics": ["target_prob", "target_logit", "indirect_effect"],
    }
    full = rows(run(tmp_path, {"name": "ivx-toy", "dtype": "float32"}, body, "float32"))
    tokenizer = models.load("ivx-toy", weights=False).tokenizer
    facts = [json.loads(line) for line in FACTS.read_text().splitlines()[:3]]
    target_ids = [tokenizer(f["target"], add_special_tokens=False)["input_ids"][0] for f in facts]
    assert max(r["target_prob"] for r in full) > 0.5  # the facts are known: probabilities span [0, 1]
    for dtype, u in (("bfloat16", 2**-8), ("float16", 2**-11)):
        half_dir = run(tmp_path, {"name": "ivx-toy", "dtype": dtype}, body, dtype)
        half = rows(half_dir)
        assert json.loads((half_dir / "manifest.json").read_text())["dtype"] == dtype
        assert len(half) == len(full) > 0
        logit = max(abs(f["target_logit"] - h["target_logit"]) for f, h in zip(full, half, strict=True))
        prob = max(abs(f["target_prob"] - h["target_prob"]) for f, h in zip(full, half, strict=True))
        effect = max(
            abs(f["indirect_effect"] - h["indirect_effect"]) for f, h in zip(full, half, strict=True)
        )
        assert all(
            math.isfinite(h[k]) for h in half for k in ("target_prob", "target_logit", "indirect_effect")
        )
        assert 0 < logit <= 2 * u * 20, (dtype, logit)  # > 0: the model really ran in half precision
        assert prob <= u * 20 and effect <= 2 * u * 20, (dtype, prob, effect)
        tensors = load_file(str(half_dir / "tensors.safetensors"))
        assert {t.dtype for t in tensors.values()} == {torch.float32}  # logits leave the model as fp32
        # the rows' metrics are functions of those float32 logits: target_logit (linear, so the
        # mean over noise samples commutes) recomputed in float64 from the stored cell logits
        for cell in half[-5:]:
            logits = tensors[f"cell{cell['cell']}"].double()  # [vocab], mean over samples
            assert cell["target_logit"] == pytest.approx(
                float(logits[target_ids[cell["prompt_index"]]]), abs=1e-5
            )


BAD = """name: bad
model: {name: ivx-toy, device_map: {lm_head: gpu}}
prompts:
  - {base: "In the old records , the Zorvan Tower is located in the city of", target: " Trelin"}
interventions:
  - {kind: vanilla, component: block_output, layer: 1, position: last, source: base}
batch: {memory_gb: 0}
"""


def test_bad_big_model_settings_exit_2_with_file_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ivx.cli.app import app

    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert (
        f"{path}:2  model.device_map  device_map['lm_head'] = 'gpu' must be cpu, disk, cuda:N"
        in result.output
    )
    assert (
        f"{path}:7  batch.memory_gb  batch.memory_gb 0 must be 'auto' or a number of GiB > 0" in result.output
    )
    path.write_text(
        BAD.replace("device_map: {lm_head: gpu}", "device: cpu, device_map: auto").replace("0}", "1.5}")
    )
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "runs")])
    assert result.exit_code == 2
    assert f"{path}:2  model  device 'cpu' and device_map are both set" in result.output
    assert not (tmp_path / "runs").exists()


def test_device_map_without_accelerate_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    from typer.testing import CliRunner

    from ivx.cli.app import app

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "accelerate" else real(name, *a)
    )
    path = tmp_path / "exp.yaml"
    path.write_text(BAD.replace("{lm_head: gpu}", "auto").replace("0}", "1.5}"))
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert (
        "model.device_map needs accelerate, which is not installed: pip install 'ivx-interventions[gpu]'"
        in result.output
    )


@pytest.mark.gpu
def test_model_split_over_two_gpus_equals_one_gpu(tiny_model_dir, tmp_path: Path) -> None:
    """On a machine with 2+ GPUs (never run where ivx was written: no GPU there): the last block on
    cuda:1, the rest on cuda:0, against the whole model on cuda:0, float32, same kernels."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    model_dir = tiny_model_dir("llama")
    split = {k: ("cuda:1" if v == "disk" else "cuda:0") for k, v in split_map(model_dir).items()}
    one = run(tmp_path, {"name": str(model_dir), "device": "cuda:0", "dtype": "float32"}, TRACE, "one")
    two = run(tmp_path, {"name": str(model_dir), "device_map": split, "dtype": "float32"}, TRACE, "two")
    assert json.loads((two / "manifest.json").read_text())["device"] == "cuda:0,cuda:1"
    a, b = load_file(str(one / "tensors.safetensors")), load_file(str(two / "tensors.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-5)
