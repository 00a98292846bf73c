"""The exact shortcuts beyond the layout rows: learned from the module structure, proven, or off with a reason.

- the deferred head runs the model's own forward after its backbone, so a logit scale (Cohere),
  a soft-cap (Gemma 2) or a logit scaling (Granite) is applied exactly as the plain forward does;
  a decoder wrapper whose forward calls `model.decoder` (OPT) gets its output embedding;
- layer reuse slices per-row block arguments folded with heads (BLOOM's alibi);
- final-block trimming finds the last block's output projections and MLP without a layout row;
- any exception in the pre-run probe switches that shortcut off with the exception's text.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ivx.engine import shortcuts
from ivx.model import loading as models
from ivx.recipes import run as experiment
from tests.tiny import tokenizer

SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "intermediate_size": 64, "head_dim": 8, "max_position_embeddings": 128, "n_embed": 32, "n_layer": 2,
         "n_head": 4, "pad_token_id": 0, "bos_token_id": 0, "eos_token_id": 0}  # fmt: skip
HEAD_EXTRAS = {
    "cohere": {"logit_scale": 0.25},
    "gemma2": {"final_logit_softcapping": 0.5},
    "granite": {"logits_scaling": 4.0},
    "opt": {"ffn_dim": 64, "word_embed_proj_dim": 32},
}
BASE = "When Mary and John went to the store , John gave a drink to"
SOURCE = "When Mary and John went to the store , Mary gave a drink to"
OFF = {
    "prefix_reuse": False,
    "layer_reuse": False,
    "skip_noop": False,
    "defer_head": False,
    "trim_final": False,
}


def build(arch: str, out: Path, **extra: object) -> Path:
    """A tiny random `arch` model with the tests' tokenizer (config fields it lacks are ignored)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = tokenizer()
    config = AutoConfig.for_model(arch, vocab_size=len(tok), **{**SMALL, **extra})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.parametrize("arch", sorted(HEAD_EXTRAS))
def test_deferred_head_applies_what_the_model_does_after_its_head(arch: str, tmp_path: Path) -> None:
    lm = models.load(str(build(arch, tmp_path / arch, **HEAD_EXTRAS[arch])))
    ids = torch.tensor([lm.tokenizer(BASE, add_special_tokens=False)["input_ids"]] * 2)
    with torch.no_grad():
        want = lm.model(input_ids=ids).logits[:, -1].float()  # [2, vocab]
        plain_head = lm.model.get_output_embeddings()(shortcuts.final_hidden(lm, ids)).float()
        got = shortcuts.unembed(lm, shortcuts.final_hidden(lm, ids))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    if arch != "opt":  # the head alone misses the scale / cap: the test would catch the old way
        assert not torch.allclose(plain_head, want, atol=1e-3)


def _run(tmp_path: Path, model_dir: Path, name: str, batch: dict) -> tuple[dict, dict]:
    body = {
        "name": name,
        "model": {"name": str(model_dir)},
        "prompts": [{"base": BASE, "source": SOURCE, "target": " Mary"}],
        "metrics": ["target_prob"],
        "output": {"plots": False},
        "sweep": {"layer": "all", "position": [2, 9, -1]},
        "interventions": [
            {"kind": "vanilla", "component": "block_output", "layer": "$layer", "position": "$position"}
        ],
        "batch": batch,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body))
    run_dir = experiment.run(path, out_root=str(tmp_path / name), progress=False)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    return manifest["shortcuts"]["shortcuts"], load_file(str(run_dir / "tensors.safetensors"))


def test_bloom_engages_every_shortcut_and_changes_no_number(tmp_path: Path) -> None:
    """BLOOM has no layout row; its alibi is [rows * heads, 1, keys] and its MLP takes the residual."""
    model_dir = build("bloom", tmp_path / "bloom")
    state, tensors = _run(tmp_path, model_dir, "on", {})
    assert all(v["on"] for v in state.values()), state
    _, reference = _run(tmp_path, model_dir, "off", OFF)
    assert tensors.keys() == reference.keys() and tensors
    for key in reference:
        torch.testing.assert_close(tensors[key], reference[key], atol=2e-5, rtol=1e-5)


def test_an_exception_in_a_probe_switches_that_shortcut_off(
    tiny_model_dir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A head that raises: the run completes with the deferred head (and trimming, which needs it)
    off, the exception's text in the manifest, and the numbers of the all-off run."""
    model_dir = tiny_model_dir("gpt2")
    _, reference = _run(tmp_path, model_dir, "off", OFF)

    def broken(lm: object, hidden: torch.Tensor) -> torch.Tensor:
        raise KeyError("an API that moved")

    monkeypatch.setattr(shortcuts, "unembed", broken)
    state, tensors = _run(tmp_path, model_dir, "broken", {})
    assert not state["defer_head"]["on"] and "KeyError" in state["defer_head"]["why"]
    assert "an API that moved" in state["defer_head"]["why"]
    assert not state["trim_final"]["on"]
    assert state["prefix_reuse"]["on"] and state["layer_reuse"]["on"]
    for key in reference:
        torch.testing.assert_close(tensors[key], reference[key], atol=2e-5, rtol=1e-5)
