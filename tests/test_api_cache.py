"""The activation cache (`ivx.cache`, `ivx.Model`) against `output_hidden_states` and hand hooks:
exact values, unchanged outputs, hooks gone after errors, errors that name ivx's sites."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import ivx
from ivx.model import components
from ivx.model import loading as models

TEXTS = ["When Mary and John went to the store , John gave a drink to", "The Eiffel Tower is in"]
Z = {
    "gpt2": "transformer.h.{}.attn.c_proj",
    "llama": "model.layers.{}.self_attn.o_proj",
    "gpt_neox": "gpt_neox.layers.{}.attention.dense",
}


@pytest.fixture(scope="module")
def tiny(tiny_model_dir) -> dict[str, ivx.Model]:
    return {arch: ivx.Model(str(tiny_model_dir(arch))) for arch in Z}


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("arch", list(Z))
def test_cache_equals_hidden_states_and_hand_hooks(arch: str, tiny: dict[str, ivx.Model]) -> None:
    """Residual sites equal output_hidden_states per prompt (two lengths, right-padded); head values
    equal a hand pre-hook on the output projection split into heads; the logits are unchanged."""
    m = tiny[arch]
    before = _hook_count(m.hf)  # transformers registers hooks of its own
    cache = ivx.cache(m, TEXTS, ["block_input.0", "block_output.0", "head_attention_value_output.1"])
    assert _hook_count(m.hf) == before  # (transformers adds its own on an output_hidden_states call)
    assert sorted(cache) == ["block_input.0", "block_output.0", "head_attention_value_output.1"]
    n_heads, hd = m.lm.info.n_heads, m.lm.info.head_dim
    for i, text in enumerate(TEXTS):
        ids = torch.tensor([m.tokenizer(text)["input_ids"]])
        seen = {}
        handle = m.hf.get_submodule(Z[arch].format(1)).register_forward_pre_hook(
            lambda mod, a: seen.__setitem__("z", a[0].clone())
        )
        try:
            with torch.no_grad():
                out = m.hf(input_ids=ids, output_hidden_states=True)
        finally:
            handle.remove()
        n = ids.shape[1]
        assert cache.lengths[i] == n
        assert torch.equal(cache["block_input.0"][i, :n], out.hidden_states[0][0])
        assert torch.equal(cache["block_output.0"][i, :n], out.hidden_states[1][0])
        assert torch.equal(cache["head_attention_value_output.1"][i, :n], seen["z"][0].view(n, n_heads, hd))
        assert torch.equal(cache.logits[i, :n], out.logits[0])  # capturing never changes the outputs
        assert not cache["block_output.0"][i, n:].any()  # padding is zeros


def test_bare_component_and_transformerlens_names(tiny: dict[str, ivx.Model]) -> None:
    """`block_output` is every layer; TransformerLens hook names are aliases, also on lookup."""
    m = tiny["llama"]
    cache = m.cache(TEXTS[1], ["block_output", "blocks.1.attn.hook_z", "blocks.0.hook_resid_pre"])
    assert list(cache) == [
        "block_output.0",
        "block_output.1",
        "head_attention_value_output.1",
        "block_input.0",
    ]
    assert torch.equal(cache["blocks.1.hook_resid_post"], cache["block_output.1"])
    assert cache["blocks.1.attn.hook_z"].shape == (1, cache.lengths[0], 4, 8)
    assert cache["block_output.-1"].shape == cache["block_output.1"].shape


def test_unknown_sites_name_the_nearest(tiny: dict[str, ivx.Model]) -> None:
    m = tiny["gpt2"]
    with pytest.raises(components.ComponentError, match="nearest: block_output.1"):
        m.cache(TEXTS[1], ["block_outptu.1"])
    with pytest.raises(components.ComponentError, match="out of range"):
        m.cache(TEXTS[1], ["block_output.7"])
    with pytest.raises(components.ComponentError, match="no ivx site"):
        m.cache(TEXTS[1], ["blocks.0.attn.hook_result"])
    cache = m.cache(TEXTS[1], ["block_output.1"])
    with pytest.raises(KeyError, match="was not captured; captured: block_output.1"):
        cache["block_output.0"]


def test_hooks_are_removed_after_an_error(tiny: dict[str, ivx.Model]) -> None:
    """A forward that fails midway leaves none of ivx's hooks behind (only the test's own)."""
    m = tiny["gpt_neox"]
    block = m.hf.get_submodule("gpt_neox.layers.1")
    before = _hook_count(m.hf)  # transformers registers hooks of its own

    def fail(mod, args, out):
        raise RuntimeError("boom")

    handle = block.register_forward_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            m.cache(TEXTS, ["block_output.0", "mlp_output.1", "head_attention_value_output.0"])
        assert _hook_count(m.hf) == before + 1
    finally:
        handle.remove()
    assert _hook_count(m.hf) == before


def test_model_runs_configs_without_reloading(tiny_model_dir, tmp_path: Path, monkeypatch) -> None:
    """`Model.run` (and `ivx.run(model=...)`) reuse the loaded weights; a config naming another model is refused."""
    path = str(tiny_model_dir("gpt2"))
    m = ivx.Model(path)
    monkeypatch.setattr(models, "load", lambda *a, **k: pytest.fail("reloaded the model"))
    monkeypatch.setattr(models, "load_spec", lambda *a, **k: pytest.fail("reloaded the model"))
    config = {
        "name": "reuse",
        "model": {"name": path, "bos": False},
        "prompts": [{"base": TEXTS[1], "target": " Paris"}],
        "readout": "logit_lens",
        "output": {"root": str(tmp_path), "plots": False},
    }
    run = m.run(config)
    with torch.no_grad():
        logits = m.hf(input_ids=torch.tensor([m.tokenizer(TEXTS[1])["input_ids"]])).logits[0, -1]
    paris = m.tokenizer(" Paris", add_special_tokens=False)["input_ids"][0]
    assert run.results["target_prob"][0] == pytest.approx(float(torch.softmax(logits, -1)[paris]), abs=1e-6)
    assert "readout: logit_lens" in run.table()
    again = ivx.run(config, model=m, seed=1)
    assert again.results["target_prob"][0] == run.results["target_prob"][0]
    with pytest.raises(ivx.api.ModelMismatch, match="names model 'ivx-toy'"):
        m.run({**config, "model": {"name": "ivx-toy"}})
