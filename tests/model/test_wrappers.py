"""Decoder blocks found in wrappers and encoder-decoder halves, and their feed-forward as mlp_output.

Oracles are algebraic identities of each family's block, with module outputs captured by ivx's
sites: a BART decoder block (post-norm) is `LN_f(LN_a(x + attention) + mlp)`, a BERT-style layer
`LN_o(mlp + LN_a(attention + x))`; a multimodal wrapper's blocks reproduce `output_hidden_states`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import coverage_models  # noqa: E402

from ivx.model import components, hooks  # noqa: E402
from ivx.model import loading as models  # noqa: E402

IDS = torch.tensor([[3, 4, 5, 6, 7, 8]])


def _load(model_type: str, tmp_path: Path):
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        pytest.skip(f"{model_type} is not in this transformers' causal-LM mapping")
    return models.load(str(coverage_models.build(model_type, tmp_path / model_type)))


def _acts(lm, layer: int, names: list[str]) -> dict[str, torch.Tensor]:
    sites = {n: components.resolve(lm.model, lm.info, n, layer) for n in names}
    with torch.no_grad(), hooks.capturing(lm.model, list(sites.values())) as store:
        lm.model(IDS, use_cache=False)
    return {n: store[s] for n, s in sites.items()}


NAMES = ["block_input", "attention_output", "mlp_input", "mlp_output", "block_output"]


def test_bart_decoder_feed_forward_is_fc2(tmp_path: Path) -> None:
    lm = _load("bart", tmp_path)
    assert set(NAMES) <= set(lm.info.components)
    assert components.resolve(lm.model, lm.info, "mlp_output", 1).module == "model.decoder.layers.1.fc2"
    block = lm.model.model.decoder.layers[1]
    a = _acts(lm, 1, NAMES)
    mid = block.self_attn_layer_norm(a["block_input"] + a["attention_output"])
    torch.testing.assert_close(a["mlp_input"], mid)
    torch.testing.assert_close(a["block_output"], block.final_layer_norm(mid + a["mlp_output"]))


def test_bert_decoder_attention_and_feed_forward_are_the_dense_outputs(tmp_path: Path) -> None:
    lm = _load("bert", tmp_path)
    assert set(NAMES) <= set(lm.info.components)
    assert components.resolve(lm.model, lm.info, "attention_output", 0).module.endswith(
        "attention.output.dense"
    )
    assert components.resolve(lm.model, lm.info, "mlp_output", 0).module.endswith("output.dense")
    layer = lm.model.bert.encoder.layer[0]
    a = _acts(lm, 0, NAMES)
    mid = layer.attention.output.LayerNorm(a["attention_output"] + a["block_input"])
    torch.testing.assert_close(a["mlp_input"], mid)
    torch.testing.assert_close(a["block_output"], layer.output.LayerNorm(a["mlp_output"] + mid))


@pytest.mark.parametrize("model_type", ["gemma3", "fuyu"])
def test_wrapper_blocks_are_the_language_model_blocks(model_type: str, tmp_path: Path) -> None:
    lm = _load(model_type, tmp_path)
    with torch.no_grad():
        hs = lm.model(IDS, output_hidden_states=True, use_cache=False).hidden_states
    assert lm.info.n_layers == len(hs) - 1 == 2
    torch.testing.assert_close(_acts(lm, 0, ["block_output"])["block_output"], hs[1])
    torch.testing.assert_close(_acts(lm, 0, ["block_input"])["block_input"], hs[0])


def test_moe_blocks_list_no_mlp_activation(tmp_path: Path) -> None:
    """An MoE block has no single down projection: mlp_activation is not listed (was an error)."""
    lm = _load("mixtral", tmp_path)
    assert "mlp_output" in lm.info.components and "mlp_activation" not in lm.info.components
