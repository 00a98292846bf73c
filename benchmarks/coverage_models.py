"""Tiny random models of every causal-LM architecture in the installed transformers.

`tiny_config(model_type)` takes the architecture's default config and shrinks every size field it
knows (layers, width, heads, vocabulary, experts, ...) in it and in its sub-configs; `build`
instantiates the causal-LM class with a fixed seed and saves it, with the word-level test
tokenizer, where `ivx` can load it like any checkpoint. Used by `benchmarks/coverage.py`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.tiny import tokenizer  # noqa: E402

VOCAB = 256
LAYERS = 2
# size fields and the tiny value each one gets, wherever it appears (top level or sub-config)
SHRINK: dict[str, Any] = {
    **dict.fromkeys(("num_hidden_layers", "n_layer", "num_layers", "n_layers", "decoder_layers"), LAYERS),
    **dict.fromkeys(("hidden_size", "n_embd", "d_model", "dim", "embed_dim", "word_embed_proj_dim"), 64),
    **dict.fromkeys(("num_attention_heads", "n_head", "n_heads", "decoder_attention_heads"), 4),
    **dict.fromkeys(("num_key_value_heads", "n_kv_heads", "num_kv_heads", "multi_query_group_num"), 2),
    **dict.fromkeys(("head_dim", "kv_channels", "attention_head_dim", "qk_nope_head_dim", "v_head_dim"), 16),
    **dict.fromkeys(("qk_rope_head_dim", "qk_head_dim_rope"), 8),
    **dict.fromkeys(("intermediate_size", "ffn_dim", "n_inner", "decoder_ffn_dim", "ffn_hidden_size"), 128),
    **dict.fromkeys(
        ("moe_intermediate_size", "expert_intermediate_size", "shared_expert_intermediate_size"), 32
    ),
    **dict.fromkeys(
        ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts", "n_experts"), 4
    ),
    **dict.fromkeys(("num_experts_per_tok", "moe_topk", "top_k", "moe_k", "num_selected_experts"), 2),
    **dict.fromkeys(("n_shared_experts", "num_shared_experts", "moe_num_shared_experts"), 1),
    **dict.fromkeys(("n_group", "topk_group", "first_k_dense_replace", "num_expert_group"), 1),
    **dict.fromkeys(("num_experts_per_token",), 2),
    **dict.fromkeys(("q_lora_rank", "kv_lora_rank", "index_head_dim"), 16),
    **dict.fromkeys(("vocab_size", "padded_vocab_size", "unpadded_vocab_size"), VOCAB),
    **dict.fromkeys(("attention_hidden_size",), 128),  # Zamba: attention over [hidden, embeddings]
    **dict.fromkeys(("moe_shared_expert_intermediate_size",), 32),
    **dict.fromkeys(("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "seq_length"), 128),
    **dict.fromkeys(("dropout", "attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop"), 0.0),
    **dict.fromkeys(("attn_pdrop", "hidden_dropout_prob", "attention_probs_dropout_prob"), 0.0),
    **dict.fromkeys(("activation_dropout", "ffn_dropout", "classifier_dropout", "layerdrop"), 0.0),
    **dict.fromkeys(("decoder_layerdrop", "encoder_layerdrop", "embed_dropout", "output_dropout"), 0.0),
    **dict.fromkeys(("sliding_window", "attention_window", "local_window_size"), 64),
    **dict.fromkeys(("state_size", "ssm_state_size", "mamba_d_state", "conv_kernel", "mamba_d_conv"), 4),
    **dict.fromkeys(("mamba_n_heads", "mamba_num_heads", "n_mamba_heads", "linear_num_value_heads"), 4),
    **dict.fromkeys(("linear_num_key_heads", "num_heads"), 2),
    **dict.fromkeys(("linear_key_head_dim", "linear_value_head_dim", "d_head"), 16),
    **dict.fromkeys(("mamba_head_dim", "mamba_d_head", "mamba_headdim"), 32),
    **dict.fromkeys(("mamba_d_ssm",), 128),
    **dict.fromkeys(("mamba_dt_rank",), 4),
    **dict.fromkeys(("attn_layer_period", "expert_layer_period"), 2),
    **dict.fromkeys(("attn_layer_offset", "expert_layer_offset"), 1),
    **dict.fromkeys(("rotary_dim",), 8),
    **dict.fromkeys(("expand", "mamba_expand"), 2),
    **dict.fromkeys(("time_step_rank", "rescale_every"), 4),
    **dict.fromkeys(("tie_word_embeddings",), False),
    **dict.fromkeys(("use_cache",), True),
}
NULLABLE = (
    "head_dim",
    "num_key_value_heads",
    "num_experts_per_tok",
)  # None means "derive it"; a tiny value is the same
EXTRA: dict[str, dict[str, Any]] = {
    "gpt_neo": {"attention_types": [[["global", "local"], 1]]},
    "mamba2": {"num_heads": 8, "head_dim": 16},
    "zamba": {"attention_head_dim": 32},
    "zamba2": {"attention_head_dim": 32},
    "lfm2_moe": {"layer_types": ["conv", "full_attention"]},
    "reformer": {"is_decoder": True, "attn_layers": ["local", "lsh"]},
}
# Per-architecture fixes the generic shrinking cannot derive; each keeps what defines the architecture.
QSA = {"indexer_n_heads": 2, "indexer_kv_heads": 1, "indexer_head_dim": 16, "indexer_budget": 4}
EXTRA |= {
    # hybrid_layer_ids is derived from layers_block_type, but to_dict() keeps the 54-layer list
    "zamba2": {**EXTRA["zamba2"], "hybrid_layer_ids": [1]},
    # hybrids: their checkpoints interleave attention layers (Bamba-9B at 9, 18, 27; Granite 4.0-H
    # every few layers); the defaults of 2 layers would keep only Mamba ones
    "bamba": {"attn_layer_indices": [1]},
    "granitemoehybrid": {"layer_types": ["mamba", "attention"]},
    # one block per kind (Mamba-2, MoE, attention, MLP); 8 SSM groups do not divide 4 heads
    "nemotron_h": {"n_groups": 2},
    # transformers' defaults lack the attention's rope_theta and set clip_qkv=None, which its
    # forward clamps with; DBRX checkpoints state both
    "dbrx": {
        "attn_config": {"kv_n_heads": 2, "rope_theta": 10000.0, "clip_qkv": 8.0},
        "ffn_config": {"moe_top_k": 2},
    },
    "dots1": {"n_routed_experts": 4, "n_shared_experts": 1},  # None by default: the config has no experts
    "glm4_moe_lite": {"num_key_value_heads": 4, "qk_head_dim": 24},  # MLA: one key per query head
    "xlstm": {"embedding_dim": 64, "num_blocks": 2},  # the block width and count, besides hidden_size
    # axial position embeddings factor max_position_embeddings and split the width; chunks of 8 and 4
    # hash buckets so the prompts span several chunks; a fixed hash seed (None draws new rotations
    # every forward)
    "reformer": {
        **EXTRA["reformer"],
        **{"axial_pos_shape": [8, 16], "axial_pos_embds_dim": [16, 48], "attention_head_size": 16},
        **{"feed_forward_size": 128, "local_attn_chunk_length": 8, "lsh_attn_chunk_length": 8},
        **{"num_buckets": 4, "num_hashes": 2, "hash_seed": 0, "local_attention_probs_dropout_prob": 0.0},
    },
    # its QSA (indexed attention) layers need the indexer sizes, unset by default; the budget (4 of
    # the compressed blocks' tokens) is below the prompt length, so the selection matters
    "qwen4_exp": {**QSA, "indexer_compress_ratio": 2, "hc_lowrank": 16},
    "qwen4_exp_text": {**QSA, "indexer_compress_ratio": 2, "hc_lowrank": 16},
    "zaya": {"num_experts_per_tok": 1, "router_hidden_size": 32},  # ZAYA supports top-1 routing only
    # the sliding-window layer's MLA sizes are per layer; DSA's top-k (4) below the prompt length
    "dots3_note": {
        "index_topk": 4,
        "index_n_heads": 4,
        "shared_experts_intermediate_size": 32,
        "per_layer_config": {"1": {"num_attention_heads": 4, "num_key_value_heads": 4, "q_lora_rank": 16}},
    },
    # the assistants share every layer's keys and values with their target model
    "gemma4_assistant": {"text_config": {"num_kv_shared_layers": 2}, "backbone_hidden_size": 64},
    "gemma4_unified_assistant": {"text_config": {"num_kv_shared_layers": 2}, "backbone_hidden_size": 64},
    # rope per layer type: sliding layers rotate (M-RoPE with text positions), full layers are NoPE
    "cohere_compass_text": {
        "layer_types": ["sliding_attention", "full_attention"],
        "rope_parameters": {
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2]},
            "full_attention": None,
        },
    },
    # the local encoder / decoder project from the global transformer's width; 6 hash tables of 512
    "blt": {
        "encoder_hash_byte_group_vocab": 512,
        "encoder_config": {"hidden_size_global": 64},
        "decoder_config": {"hidden_size_global": 64},
    },
    # one input, one recurrent (run twice), one output layer; config.json counts attention and MLP
    # as separate entries
    "dory": {
        **{"num_hidden_layers": 6, "n_input_layers": 2, "n_recurrent_layers": 2, "n_output_layers": 2},
        "layer_types": ["sliding_attention", "mlp", "full_attention", "mlp", "sliding_attention", "mlp"],
    },
    # four layers so the last two reuse the first two's keys and values (KV sharing); small per-layer
    # embeddings and LAuReL rank
    "gemma3n_text": {
        "num_hidden_layers": 4,
        "num_kv_shared_layers": 2,
        "layer_types": ["sliding_attention", "full_attention"] * 2,
        "intermediate_size": [128] * 4,
        "activation_sparsity_pattern": [0.95, 0.95, 0.0, 0.0],
        **{"vocab_size_per_layer_input": VOCAB, "hidden_size_per_layer_input": 16, "laurel_rank": 8},
    },
    "xmod": {"languages": ["en_XX", "de_DE"], "default_language": "en_XX"},  # adapters per language
    "mllama": {"num_hidden_layers": 3, "cross_attention_layers": [1]},  # one cross-attention layer
}
EXTRA["dots3_note"]["per_layer_config"]["1"] |= {"kv_lora_rank": 16, "head_dim": 24, "qk_nope_head_dim": 16}
EXTRA["dots3_note"]["per_layer_config"]["1"] |= {"qk_rope_head_dim": 8, "v_head_dim": 16}
EXTRA["dots3_note_text"] = EXTRA["dots3_note"]
# speculative-decoding drafters: their forward needs the target model's embeddings and shared KV
DRAFTERS = ("gemma4_assistant", "gemma4_unified_assistant")
# configs whose defaults do not validate: the values their constructor needs first
BASE: dict[str, dict[str, Any]] = dict.fromkeys(
    ("gemma4_assistant", "gemma4_unified_assistant"),
    {
        "text_config": {
            **{"hidden_size_per_layer_input": 0, "vocab_size_per_layer_input": 0, "num_kv_shared_layers": 0},
            **{"enable_moe_block": False, "use_double_wide_mlp": False},
        }
    },
)


def _layered(key: str, value: Any, old_layers: int | None) -> bool:
    """Whether `value` is a per-layer list (or a per-layer pattern string such as "MMM*MM")."""
    if not old_layers or not isinstance(value, list | str) or len(value) != old_layers:
        return False
    return isinstance(value, list) or "pattern" in key


def _per_layer(value: list[Any] | str) -> list[Any] | str:
    """A per-layer list cut to LAYERS entries, keeping as many distinct layer kinds as fit."""
    kinds = list(dict.fromkeys(v for v in value if isinstance(v, str | int | float | bool)))
    if len(kinds) <= 1 or len(kinds) != len(set(kinds)) or not all(isinstance(v, str) for v in value):
        return value[:LAYERS]
    picked = kinds[:LAYERS] + [value[0]] * (LAYERS - len(kinds[:LAYERS]))
    return "".join(picked) if isinstance(value, str) else picked


def _shrink(data: dict[str, Any], depth: int = 0) -> dict[str, Any]:
    """A copy of a config dict with every known size field (also in sub-configs) made tiny."""
    old_layers = next((data[k] for k in SHRINK if SHRINK[k] == LAYERS and isinstance(data.get(k), int)), None)
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("id2label", "label2id", "rope_scaling", "rope_parameters") or not isinstance(key, str):
            out[key] = value
        elif key == "per_layer_config" and isinstance(value, dict):
            out[key] = {k: v for k, v in value.items() if int(k) < LAYERS}
        elif isinstance(value, dict) and depth < 3:
            out[key] = _shrink(value, depth + 1)
        elif key in SHRINK and isinstance(value, list) and old_layers and len(value) == old_layers:
            out[key] = [SHRINK[key]] * LAYERS
        elif key in SHRINK and (value is not None or key in NULLABLE) and not isinstance(value, list | str):
            out[key] = type(value)(SHRINK[key]) if isinstance(value, int | float) else SHRINK[key]
        elif _layered(key, value, old_layers):
            out[key] = _per_layer(value)
        elif key.endswith("_token_id") and isinstance(value, int) and value >= VOCAB:
            out[key] = 1
        elif key.endswith("_token_id") and isinstance(value, list):
            out[key] = [v if v < VOCAB else 1 for v in value]
        else:
            out[key] = value
    if isinstance(out.get("qk_rope_head_dim"), int) and "head_dim" in out:
        out["head_dim"] = out["qk_rope_head_dim"]  # MLA: rotary embeddings sized by the rope part
        out["qk_head_dim"] = out["qk_rope_head_dim"] + out.get("qk_nope_head_dim", 0)
        out["num_key_value_heads"] = out.get("num_attention_heads")
    out.pop("torch_dtype", None)
    out.pop("dtype", None)
    return out


def _merged(data: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`data` with `extra`'s values put in, sub-config by sub-config."""
    out = dict(data)
    for key, value in extra.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merged(out[key], value) if both else value
    return out


def tiny_config(model_type: str) -> Any:
    """The architecture's default config with every size field shrunk (ValueError if it cannot be made)."""
    from transformers import CONFIG_MAPPING

    cls = getattr(causal_lm_class(model_type), "config_class", None) or CONFIG_MAPPING[model_type]
    data = _merged(_shrink(cls(**BASE.get(model_type, {})).to_dict()), EXTRA.get(model_type, {}))
    if "is_decoder" in data:  # BERT-style models are causal LMs only as decoders
        data["is_decoder"] = True
    data.pop("transformers_version", None)
    return cls.from_dict(data)


def causal_lm_class(model_type: str) -> Any:
    """The class `AutoModelForCausalLM` builds for this model_type."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return getattr(transformers, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type])


def build(model_type: str, out_dir: Path, seed: int = 0) -> Path:
    """Save a tiny random `model_type` causal LM plus the word-level tokenizer into `out_dir`."""
    import torch

    config = tiny_config(model_type)
    torch.manual_seed(seed)
    model = causal_lm_class(model_type)(config)
    model.eval()
    if model_type not in DRAFTERS:
        with torch.no_grad():  # a model whose own forward fails has nothing for ivx to patch
            rows = getattr(config, "num_codebooks", 1) if model_type.startswith("musicgen") else 1
            model(input_ids=torch.tensor([[3, 4, 5, 6]] * rows), use_cache=False)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer().save_pretrained(out_dir)
    return out_dir
