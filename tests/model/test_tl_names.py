"""TransformerLens hook names: each alias reads the tensor TransformerLens defines (issue #27).

Every aliased ivx component is captured on tiny gpt2 and llama models and compared with the
TransformerLens definition computed by hand from `output_hidden_states`, module outputs and the
attention arithmetic; refused names and layer prefixes are config errors naming the ivx site.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ivx.config import tl_names
from ivx.config.schema import Intervention, Receiver
from ivx.model import components, hooks
from ivx.model import loading as models

IDS = [[3, 17, 8, 25, 11, 4]]


def _capture(lm: models.LoadedModel, names: list[tuple[str, int]]) -> dict[tuple[str, int], torch.Tensor]:
    sites = {key: components.resolve(lm.model, lm.info, key[0], key[1]) for key in names}
    with torch.no_grad(), hooks.capturing(lm.model, list(sites.values())) as store:
        lm.model(input_ids=torch.tensor(IDS))
    return {key: store[site] for key, site in sites.items()}


def _outputs(lm: models.LoadedModel, paths: list[str]) -> tuple[dict[str, torch.Tensor], tuple]:
    """Each module's output (first element of a tuple) and the hidden states of one forward."""
    got: dict[str, torch.Tensor] = {}
    handles = [
        lm.model.get_submodule(p).register_forward_hook(
            lambda m, a, o, p=p: got.__setitem__(p, (o[0] if isinstance(o, tuple) else o).detach())
        )
        for p in paths
    ]
    try:
        with torch.no_grad():
            out = lm.model(input_ids=torch.tensor(IDS), output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    return got, out.hidden_states


def test_gpt2_aliases_read_transformer_lens_tensors(tiny_model_dir: Callable[[str], Path]) -> None:
    lm = models.load(str(tiny_model_dir("gpt2")))
    block = lm.model.transformer.h[0]
    names = [(tl_names.ALIASES[h], 0) for h in tl_names.ALIASES if h not in ("attn.hook_pattern",)]
    ours = _capture(lm, names)
    mods, hidden = _outputs(lm, ["transformer.h.0.attn", "transformer.h.0.mlp", "transformer.wte"])
    resid_pre, resid_post = hidden[0], hidden[1]  # layer 0 of 2: hidden_states[1] is before ln_f
    attn_out, mlp_out = mods["transformer.h.0.attn"], mods["transformer.h.0.mlp"]
    resid_mid = resid_pre + attn_out  # TransformerLens: resid_mid = resid_pre + attn_out
    with torch.no_grad():
        qkv = block.attn.c_attn(block.ln_1(resid_pre))  # [1, s, 3d]
        q, k, v = (t.view(1, 6, 4, 8).transpose(1, 2) for t in qkv.split(32, dim=-1))  # [1, h, s, dh]
        scores = q @ k.transpose(-1, -2) / math.sqrt(8)
        scores = scores.masked_fill(torch.ones(6, 6).triu(1).bool(), float("-inf"))
        z = (scores.softmax(-1) @ v).transpose(1, 2).reshape(1, 6, 32)  # hook_z, heads flattened
        post = block.mlp.act(block.mlp.c_fc(block.ln_2(resid_mid)))  # mlp.hook_post
    expected = {
        "hook_embed": mods["transformer.wte"],
        "hook_resid_pre": resid_pre,
        "hook_resid_mid": resid_mid,
        "hook_resid_post": resid_post,
        "hook_attn_out": attn_out,
        "hook_mlp_out": mlp_out,
        "attn.hook_z": z,
        "attn.hook_q": qkv[..., :32],
        "attn.hook_k": qkv[..., 32:64],
        "attn.hook_v": qkv[..., 64:],
        "mlp.hook_post": post,
    }
    for hook, tensor in expected.items():
        torch.testing.assert_close(ours[(tl_names.ALIASES[hook], 0)], tensor, msg=hook)
    torch.testing.assert_close(resid_mid + mlp_out, resid_post)  # the identity the aliases rest on


def test_llama_gated_mlp_post_and_gqa_keys(tiny_model_dir: Callable[[str], Path]) -> None:
    lm = models.load(str(tiny_model_dir("llama")))
    layer = lm.model.model.layers[1]
    ours = _capture(lm, [("mlp_activation", 1), ("head_key_output", 1), ("residual_mid", 1)])
    mods, hidden = _outputs(lm, ["model.layers.1.self_attn"])
    resid_mid = hidden[1] + mods["model.layers.1.self_attn"]
    with torch.no_grad():
        normed = layer.post_attention_layernorm(resid_mid)
        post = layer.mlp.act_fn(layer.mlp.gate_proj(normed)) * layer.mlp.up_proj(normed)
        keys = layer.self_attn.k_proj(layer.input_layernorm(hidden[1]))  # 2 key/value heads (GQA)
    torch.testing.assert_close(ours[("residual_mid", 1)], resid_mid)
    torch.testing.assert_close(ours[("mlp_activation", 1)], post)
    torch.testing.assert_close(ours[("head_key_output", 1)], keys)


def test_layer_prefix_sets_the_layer() -> None:
    iv = Intervention.model_validate({"kind": "zero", "component": "blocks.3.attn.hook_z", "head": 1})
    assert (iv.component, iv.layer, iv.head) == ("head_attention_value_output", 3, 1)
    iv = Intervention.model_validate({"kind": "zero", "component": "hook_resid_pre", "layer": 2})
    assert (iv.component, iv.layer) == ("block_input", 2)
    receiver = Receiver.model_validate({"component": "blocks.2.attn.hook_q", "head": 0})
    assert (receiver.component, receiver.layer) == ("head_query_output", 2)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"component": "blocks.1.attn.hook_result"}, "no ivx equivalent.*head_attention_value_output"),
        ({"component": "attn.hook_attn_scores"}, "head_attention_pattern"),
        ({"component": "blocks.1.attn.hook_zz"}, "did you mean 'attn.hook_z'"),
        ({"component": "blocks.1.hook_resid_pre", "layer": 2}, "names layer 1 but `layer` is 2"),
    ],
)
def test_refused_and_conflicting_names(data: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Intervention.model_validate({"kind": "zero", **data})


def test_every_alias_names_a_component_and_back() -> None:
    from ivx.config.fields import COMPONENT_NAMES

    for hook, ours in tl_names.ALIASES.items():
        assert ours in COMPONENT_NAMES
        assert tl_names.tl_name(ours) == hook
    assert not set(tl_names.ALIASES) & set(tl_names.REFUSED)
