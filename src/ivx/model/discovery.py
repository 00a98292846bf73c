"""The decoder blocks and their attention and feed-forward, found from the module tree.

For architectures without a row in `layouts.LAYOUTS`. The blocks are the `ModuleList` of
composite modules whose length is one of the config's layer counts (also a multimodal wrapper's
`text_config`, an encoder-decoder's `decoder_layers`), preferring a decoder or language model
over an encoder or vision tower. Inside a block, the attention output is the attention's
contribution before the residual add (BERT-style blocks keep that in `attention.output.dense`,
before their add-and-norm), and the feed-forward is an `mlp`-like child, or two linears on the
block (`fc1` → `fc2`: BART, mBART, Marian, PLBart, MVP, BioGPT, OPT-like), or BERT's
`intermediate.dense` → `output.dense`: `mlp_output` is always the second linear's output, the
block's feed-forward contribution before its residual add (and, post-norm, its layer norm).
"""

from __future__ import annotations

from typing import Any

LAYER_COUNTS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers", "decoder_layers")
OTHER_MODALITIES = ("vision", "visual", "audio", "image", "vqmodel", "speech")
ATTENTIONS: tuple[str, ...] = ("self_attn", "attn", "attention", "self_attention", "multi_head_attention")
ATTENTIONS += ("norm_attn_norm.attn",)  # DBRX: norm, attention, residual add and norm in one module
# (module whose input is mlp_input, module whose output is mlp_output)
FFNS = (
    ("mlp", "mlp"),
    ("feed_forward", "feed_forward"),
    ("ffn", "ffn"),
    ("block_sparse_moe", "block_sparse_moe"),  # a mixture of experts: its output, routing included
    ("moe", "moe"),
    ("fc1", "fc2"),
    ("intermediate", "output.dense"),
)


def has(model: Any, path: str) -> bool:
    """Whether the model has a submodule at `path`."""
    try:
        model.get_submodule(path)
        return True
    except AttributeError:
        return False


def _single(model: Any, path: str) -> bool:
    """Whether `path` is one module that runs once (not a list of them: LongCat's two attentions)."""
    return has(model, path) and type(model.get_submodule(path)).__name__ not in ("ModuleList", "ModuleDict")


def layer_counts(config: Any) -> set[int]:
    """Every layer count the config (or its text config) states."""
    found = set()
    for cfg in (config, getattr(config, "text_config", None), getattr(config, "decoder", None)):
        for name in LAYER_COUNTS:
            value = getattr(cfg, name, None) if cfg is not None else None
            if isinstance(value, int) and value > 0:
                found.add(value)
    return found


# architectures whose blocks cannot be given ivx's meaning of a position, with the reason
REFUSED = {
    "cpmant": "CPM-Ant prepends prompt_types × prompt_length learned prompt positions inside the model, "
    "so its blocks' positions are not the prompt's tokens: ivx cannot place positions in its blocks",
    "prophetnet": "ProphetNet's decoder blocks run the main stream and its n-gram predicting streams "
    "concatenated along the sequence axis, so a block's positions are not the prompt's tokens",
    "xlm": "XLM keeps its attentions, norms and feed-forwards in separate per-layer lists, not blocks, "
    "so there is no block input or output to hook",
    "xlnet": "XLNet's layers run a two-stream (content and query) attention over a permutation of the "
    "positions, not a causal stack of blocks",
    "hrm_text": "HRM runs its two stacks of blocks several times per forward (H_cycles × L_cycles), so a "
    "block has no single input or output to patch",
    "dory": "Dory runs its recurrent section's blocks n_recurrent_loops times per forward, so those blocks "
    "have no single input or output to patch",
    "blt": "BLT runs three stacks: byte-level local encoder and decoder blocks and a global transformer "
    "whose positions are entropy-defined patches, not the prompt's tokens; ivx does not pick one of "
    "them as the model's blocks",
    "musicgen_decoder": "MusicGen's decoder reads num_codebooks parallel streams of audio codes "
    "(input_ids of [batch × num_codebooks, seq]), not one sequence of text tokens",
    "musicgen_melody_decoder": "MusicGen Melody's decoder reads num_codebooks parallel streams of audio "
    "codes (input_ids of [batch × num_codebooks, seq]), not one sequence of text tokens",
    "gemma4_assistant": "Gemma 4's assistant (a speculative-decoding drafter) ignores input_ids: it reads "
    "its target model's embeddings and shared key/value states, so it cannot run on a prompt alone",
    "gemma4_unified_assistant": "Gemma 4's unified assistant (a speculative-decoding drafter) ignores "
    "input_ids: it reads its target model's embeddings and shared key/value states, so it cannot run on "
    "a prompt alone",
}


def refusal(config: Any) -> str | None:
    """Why ivx cannot hook this architecture's blocks, or None."""
    return REFUSED.get(getattr(config, "model_type", ""))


def skipped(config: Any) -> frozenset[int]:
    """Blocks a text-only forward does not run: Mllama's cross-attention layers attend to image
    features and are skipped without them, so they have no components (their hooks never fire)."""
    text = getattr(config, "text_config", None) or config
    layers = getattr(text, "cross_attention_layers", None)
    return frozenset(i for i in layers or () if isinstance(i, int))


Listing = tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]  # (components, per layer where they differ)


def restrict(
    config: Any, components: tuple[str, ...], per_layer: tuple[tuple[str, ...], ...], n: int
) -> Listing:
    """The listing without what this model lacks: no block input or output where several residual
    streams run between blocks (`streams`), nothing at blocks a text-only forward skips (`skipped`)."""
    if streams(config) > 1:
        components = tuple(c for c in components if c not in ("block_input", "block_output"))
        per_layer = tuple(tuple(c for c in names if c in components) for names in per_layer)
    idle = skipped(config)
    if idle:
        every = per_layer or (tuple(c for c in components if c != "embedding"),) * n
        per_layer = tuple(() if i in idle else names for i, names in enumerate(every))
    return components, per_layer


STREAMS = ("hc_mult", "hc_count", "altup_num_inputs")  # DeepSeek-V4 and Qwen4-Exp, Gemma 3n


def streams(config: Any) -> int:
    """Residual streams per position: DeepSeek-V4's and Qwen4-Exp's hyper-connections keep `hc_mult`
    / `hc_count` of them (`[batch, seq, streams, hidden]` between blocks), Gemma 3n's AltUp
    `altup_num_inputs` (`[streams, batch, seq, hidden]`), Reformer's reversible layers two (`[x1, x2]`),
    so no block input or output is one vector per position and `block_input` / `block_output` are
    not listed; 1 for every other model."""
    text = getattr(config, "text_config", None) or config
    if getattr(text, "model_type", None) == "reformer":
        return 2
    value = next((getattr(text, name) for name in STREAMS if isinstance(getattr(text, name, None), int)), 1)
    return value if isinstance(value, int) and value > 1 else 1


def blocks(model: Any) -> str | None:
    """Path of the decoder blocks' ModuleList, or None when there is none to find."""
    import torch

    counts = layer_counts(model.config)
    lists = [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.ModuleList)
        and len(module) in counts
        and any(True for _ in module[0].children())  # blocks have parts; per-layer norms do not
    ]
    # a decoder or language model first, then a text encoder (BERT-style decoders), then anything
    ranked = sorted(lists, key=lambda n: (any(w in n.lower() for w in OTHER_MODALITIES), "encoder" in n))
    return ranked[0] if ranked else None


def attention(model: Any, block: str) -> tuple[str, str] | None:
    """(module whose input is attention_input, module whose output is attention_output), or None."""
    for name in ATTENTIONS:
        if _single(model, f"{block}.{name}"):
            if has(model, f"{block}.{name}.output.dense"):  # BERT-style: dense, then add & norm
                return name, f"{name}.output.dense"
            return name, name
    return None


def feed_forward(model: Any, block: str) -> tuple[str, str] | None:
    """(module whose input is mlp_input, module whose output is mlp_output), or None."""
    for first, second in FFNS:
        if _single(model, f"{block}.{first}") and _single(model, f"{block}.{second}"):
            return first, second
    return None
