"""ivx's execution shortcuts (prefix reuse, layer reuse, no-op cells, deferred unembedding) change no number.

Each experiment runs twice: with every shortcut on (the default) and with all of them off
(every cell a full forward pass with hooks, the path the hand-written-hook oracles check).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ivx.recipes import run as experiment

OFF = {"prefix_reuse": False, "layer_reuse": False, "skip_noop": False, "defer_head": False}
# Five tokens before the subject, so some restored positions precede every corrupted token.
FACTS = [
    {"base": f"In the old records , {s} is located in the city of", "subject": s, "target": t}
    for s, t in (("Space Needle", " Seattle"), ("Eiffel Tower", " Paris"))
]
BASE = "When Mary and John went to the store , John gave a drink to"
SOURCE = "When Mary and John went to the store , Mary gave a drink to"


def _block_trace(model_dir: Path, samples: int, **restore: str) -> dict:
    """A noise trace restoring block_output at every (layer, position) of FACTS."""
    return {
        "model": {"name": str(model_dir)},
        "prompts": FACTS,
        "corrupt": {"kind": "noise", "positions": "subject", "samples": samples},
        "sweep": {"layer": "all", "position": "all"},
        "interventions": [
            {
                "kind": "vanilla",
                "component": "block_output",
                "layer": "$layer",
                "position": "$position",
                **restore,
            }
        ],
        "output": {"plots": False, "logits": "last"},
    }


def _run(tmp_path: Path, name: str, body: dict) -> tuple[list[dict], dict, dict]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "metrics": ["target_prob", "indirect_effect"], **body}))
    run_dir = experiment.run(path, out_root=str(tmp_path / "runs"), progress=False)
    rows = [json.loads(x) for x in (run_dir / "results.jsonl").read_text().splitlines()]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    tensors = load_file(str(run_dir / "tensors.safetensors"))
    return sorted(rows, key=lambda r: r["cell"]), manifest, tensors


def _compare(fast: list[dict], slow: list[dict], keys: tuple[str, ...]) -> None:
    assert len(fast) == len(slow) > 20
    for a, b in zip(fast, slow, strict=True):
        assert {k: a[k] for k in ("cell", "layer", "position")} == {
            k: b[k] for k in ("cell", "layer", "position")
        }
        for key in keys:
            assert a[key] == pytest.approx(b[key], abs=2e-6), (a, b, key)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "opt", "gemma"])
def test_causal_trace_shortcuts_change_no_number(arch: str, tiny_model_dir, tmp_path: Path) -> None:
    body = {
        "model": {"name": str(tiny_model_dir(arch))},
        "prompts": FACTS,
        "corrupt": [
            {"kind": "noise", "positions": "subject", "samples": 3},
            {"kind": "replace"},
        ],
        "sweep": {"component": ["block_output", "mlp_output"], "layer": "all", "position": "all"},
        "interventions": [
            {
                "kind": "vanilla",
                "component": "$component",
                "layer": "$layer",
                "position": "$position",
                "window": {"mlp_output": 2},
            }
        ],
        "output": {"plots": False, "logits": "last"},
    }
    fast, fast_manifest, fast_logits = _run(tmp_path, "fast", body)
    slow, slow_manifest, slow_logits = _run(tmp_path, "slow", {**body, "batch": OFF})
    _compare(fast, slow, ("indirect_effect", "target_prob", "p_corrupted"))
    assert fast_logits.keys() == slow_logits.keys()
    cells = [k for k in fast_logits if k.startswith("cell")]
    assert len(cells) == len(fast) == 2 * 2 * 2 * 2 * 13  # corruptions x comps x layers x facts x positions
    for key in fast_logits:
        torch.testing.assert_close(fast_logits[key], slow_logits[key], atol=2e-5, rtol=1e-5)
    # positions 0-4 ("In the old records ,") precede the subject: 5 positions x 2 layers x
    # 2 components x 2 facts, for each of the two corruptions, are answered by the baseline
    assert fast_manifest["cells_noop"] == 5 * 2 * 2 * 2 * 2
    assert slow_manifest["cells_noop"] == 0
    moved = 0.0
    for row in fast:
        label = row["corruption"]
        corrupted = fast_logits[f"{label}.corrupted.prompt{row['prompt_index']}"].mean(0)
        change = float((fast_logits[f"cell{row['cell']}"] - corrupted).abs().max())
        if row["position"] < 5:
            assert change == 0.0 and row["indirect_effect"] == 0.0
        else:
            moved = max(moved, change)
    # and the shortcut is not taken where restoring matters: subject cells move the logits
    assert moved > 1e-3  # tiny random models: logits move by ~1e-2, tolerance is 2e-5


def test_source_patching_shortcuts_change_no_number(tiny_model_dir, tmp_path: Path) -> None:
    body = {
        "model": {"name": str(tiny_model_dir("qwen2"))},
        "prompts": [{"base": BASE, "source": SOURCE, "target": " Mary", "foil": " John"}],
        "sweep": {"layer": "all", "position": "all"},
        "interventions": [
            {"kind": "vanilla", "component": "block_output", "layer": "$layer", "position": "$position"}
        ],
        "metrics": ["target_prob", "logit_diff"],
        "output": {"plots": False, "logits": "last"},
    }
    fast, manifest, fast_logits = _run(tmp_path, "fast", body)
    slow, _, slow_logits = _run(tmp_path, "slow", {**body, "batch": OFF})
    _compare(fast, slow, ("target_prob", "logit_diff"))
    for key in fast_logits:
        torch.testing.assert_close(fast_logits[key], slow_logits[key], atol=2e-5, rtol=1e-5)
    # base and source first differ at token 9 (John/Mary): positions 0-8 x 2 layers
    assert manifest["cells_noop"] == 9 * 2


def test_severed_trace_shortcuts_change_no_number(tiny_model_dir, tmp_path: Path) -> None:
    body = _block_trace(tiny_model_dir("gpt2"), samples=3, sever="mlp_output")
    fast, manifest, fast_logits = _run(tmp_path, "fast", body)
    slow, _, slow_logits = _run(tmp_path, "slow", {**body, "batch": OFF})
    _compare(fast, slow, ("indirect_effect", "target_prob"))
    for key in fast_logits:
        torch.testing.assert_close(fast_logits[key], slow_logits[key], atol=2e-5, rtol=1e-5)
    # restoring before the subject while later MLPs keep their corrupted values: the corrupted run
    assert manifest["cells_noop"] == 5 * 2 * 2


def test_layer_reuse_keeps_foreign_instance_forwards(tiny_model_dir, tmp_path: Path) -> None:
    """Blocks whose forward is wrapped per instance (as accelerate's device hooks do) keep the
    wrapper after layer reuse has short-cut them, and the numbers still match a full recompute."""
    from ivx.model import components
    from ivx.model import loading as models

    lm = models.load(str(tiny_model_dir("gpt2")))
    calls: list[int] = []
    blocks = components.blocks(lm.model)
    for i, block in enumerate(blocks):
        original = block.forward

        def wrapped(*args, _original=original, _i=i, **kwargs):
            calls.append(_i)
            return _original(*args, **kwargs)

        block.forward = wrapped
    wrappers = [block.__dict__["forward"] for block in blocks]
    body = _block_trace(tiny_model_dir("gpt2"), samples=2)
    paths = []
    for name, batch in (("fast", {}), ("slow", OFF)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"name": name, **body, "batch": batch, "metrics": ["target_prob"]}))
        paths.append(experiment.run(path, out_root=str(tmp_path / "runs"), progress=False, lm=lm))
    assert [block.__dict__.get("forward") for block in blocks] == wrappers
    assert calls  # the wrappers ran where blocks were computed
    fast, slow = (load_file(str(p / "tensors.safetensors")) for p in paths)
    for key in fast:
        torch.testing.assert_close(fast[key], slow[key], atol=2e-5, rtol=1e-5)
