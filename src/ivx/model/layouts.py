"""The module layouts of known decoder families: where each block keeps its attention, MLP and norms.

One `Layout` row per `model_type` (`LAYOUTS`), names relative to the block; `components` turns a
row into hook sites, and an architecture without a row gets its structural fallback.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal


@dataclass(frozen=True)
class Layout:
    """Module names of one family of decoder blocks, relative to the block."""

    blocks: str  # path of the ModuleList of blocks
    attn: str
    o_proj: str  # attention output projection (its input = per-head values)
    q: str | None  # separate projections ...
    k: str | None
    v: str | None
    qkv: Literal["gpt2", "neox", "phi3"] | None  # ... or a fused one: (path in `fused`)
    fused: str | None
    mlp: str | None  # None: MLP layers live directly on the block (OPT)
    mlp_in: str  # module whose input is mlp_input
    mlp_out: str  # module whose output is mlp_output
    mlp_down: str  # MLP output projection (its input = mlp_activation)
    mid: str | None  # module whose input is residual_mid (None: parallel residual)


_LLAMA = Layout(
    "model.layers",
    "self_attn",
    "self_attn.o_proj",
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    None,
    None,
    "mlp",
    "mlp",
    "mlp",
    "mlp.down_proj",
    "post_attention_layernorm",
)
LAYOUTS: dict[str, Layout] = {
    "gpt2": Layout(
        "transformer.h",
        "attn",
        "attn.c_proj",
        None,
        None,
        None,
        "gpt2",
        "attn.c_attn",
        "mlp",
        "mlp",
        "mlp",
        "mlp.c_proj",
        "ln_2",
    ),
    "gpt_neox": Layout(
        "gpt_neox.layers",
        "attention",
        "attention.dense",
        None,
        None,
        None,
        "neox",
        "attention.query_key_value",
        "mlp",
        "mlp",
        "mlp",
        "mlp.dense_4h_to_h",
        "post_attention_layernorm",
    ),
    "gptj": Layout(
        "transformer.h",
        "attn",
        "attn.out_proj",
        "attn.q_proj",
        "attn.k_proj",
        "attn.v_proj",
        None,
        None,
        "mlp",
        "mlp",
        "mlp",
        "mlp.fc_out",
        None,
    ),
    "opt": Layout(
        "model.decoder.layers",
        "self_attn",
        "self_attn.out_proj",
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        None,
        None,
        None,
        "fc1",
        "fc2",
        "fc2",
        "final_layer_norm",
    ),
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "mixtral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gemma": _LLAMA,
    "olmo": _LLAMA,
    "gemma2": replace(_LLAMA, mid="pre_feedforward_layernorm"),
    "gemma3_text": replace(_LLAMA, mid="pre_feedforward_layernorm"),
    "olmo2": replace(_LLAMA, mid=None),
    "phi3": Layout(
        "model.layers",
        "self_attn",
        "self_attn.o_proj",
        None,
        None,
        None,
        "phi3",
        "self_attn.qkv_proj",
        "mlp",
        "mlp",
        "mlp",
        "mlp.down_proj",
        "post_attention_layernorm",
    ),
    "phi": Layout(
        "model.layers",
        "self_attn",
        "self_attn.dense",
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        None,
        None,
        "mlp",
        "mlp",
        "mlp",
        "mlp.fc2",
        None,
    ),
}
