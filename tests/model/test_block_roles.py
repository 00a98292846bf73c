"""Blocks whose parts the module tree names unhelpfully. NemotronH keeps a Mamba-2 mixer, a mixture
of experts, an attention or an MLP under the same child name `mixer`; DBRX nests its attention
inside `norm_attn_norm`. ivx lists each part as its own component at the layers that have it, and
what it captures there equals a hand-written hook on that module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ivx.model import cache, components, loading, mixers
from tests.tiny import tokenizer

PROMPT = "When Mary and John went to the store"


def _save(model_cls: Any, config: Any, out: Path) -> Path:
    import torch

    torch.manual_seed(0)
    model_cls(config).eval().save_pretrained(out)
    tokenizer().save_pretrained(out)
    return out


def _hooked(lm: Any, path: str) -> Any:
    """The output of module `path` in a plain forward of PROMPT (a hand-written hook)."""
    import torch

    seen: list[Any] = []
    module = lm.model.get_submodule(path)
    handle = module.register_forward_hook(
        lambda _m, _i, out: seen.append(out[0] if isinstance(out, tuple) else out)
    )
    try:
        with torch.inference_mode():
            lm.model(input_ids=torch.tensor([lm.tokenizer(PROMPT)["input_ids"]]))
    finally:
        handle.remove()
    assert len(seen) == 1
    return seen[0][0]  # [seq, d_model]


@pytest.fixture(scope="module")
def nemotron_h(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from transformers import NemotronHConfig, NemotronHForCausalLM

    config = NemotronHConfig(
        **{"vocab_size": len(tokenizer()), "hidden_size": 32, "intermediate_size": 64, "head_dim": 8},
        **{"num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64},
        **{"mamba_num_heads": 4, "mamba_head_dim": 16, "n_groups": 2, "ssm_state_size": 4, "chunk_size": 8},
        **{"n_routed_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16},
        **{"moe_shared_expert_intermediate_size": 16, "use_mamba_kernels": False},
        layers_block_type=["linear_attention", "moe", "full_attention", "mlp"],
    )
    return loading.load(str(_save(NemotronHForCausalLM, config, tmp_path_factory.mktemp("nemotron_h"))))


def test_nemotron_h_mixer_is_what_its_class_says(nemotron_h: Any) -> None:
    layers = nemotron_h.info.layers
    assert "mixer_output" in layers[0] and "attention_output" not in layers[0]
    assert "mlp_output" in layers[1] and "mixer_output" not in layers[1]
    assert {"attention_output", "head_value_output"} <= set(layers[2]) and "mixer_output" not in layers[2]
    assert "mlp_output" in layers[3] and "mixer_output" not in layers[3]
    blocks = components.blocks(nemotron_h.model)
    assert mixers.per_position(blocks[3], mixers.shared(blocks)) == [("mixer", "mixer")]  # trimmable


@pytest.mark.parametrize(
    ("component", "layer"), [("attention_output", 2), ("mlp_output", 3), ("mixer_output", 0)]
)
def test_nemotron_h_captures_equal_hand_hooks(nemotron_h: Any, component: str, layer: int) -> None:
    import torch

    captured = cache.capture(nemotron_h, PROMPT, f"{component}.{layer}")[f"{component}.{layer}"][0]
    expected = _hooked(nemotron_h, f"{components.layout(nemotron_h.model)[2]}.{layer}.mixer")
    assert torch.equal(captured, expected)


def test_dbrx_attention_inside_norm_attn_norm(tmp_path: Path) -> None:
    import torch
    from transformers import DbrxConfig, DbrxForCausalLM

    config = DbrxConfig(
        **{"d_model": 32, "n_heads": 4, "n_layers": 2, "max_seq_len": 64, "vocab_size": len(tokenizer())},
        attn_config={"kv_n_heads": 2, "rope_theta": 10000.0, "clip_qkv": 8.0},
        ffn_config={"ffn_hidden_size": 64, "moe_num_experts": 4, "moe_top_k": 2},
    )
    lm = loading.load(str(_save(DbrxForCausalLM, config, tmp_path / "dbrx")))
    assert {"attention_input", "attention_output", "mlp_output"} <= set(lm.info.components)
    captured = cache.capture(lm, PROMPT, "attention_output.1")["attention_output.1"][0]
    assert torch.equal(captured, _hooked(lm, "transformer.blocks.1.norm_attn_norm.attn"))
