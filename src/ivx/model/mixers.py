"""State-space and hybrid decoders: which sequence mixer each block has, and what can be hooked there.

A Mamba block mixes positions with a selective state-space scan instead of attention; a hybrid
(Jamba, Bamba, Zamba2, FalconH1, NemotronH, LFM2, Qwen3-Next, ...) interleaves such blocks with
attention blocks, or runs both side by side. Their blocks differ layer by layer, so their
components are listed per layer: `block_input` / `block_output` everywhere, `mixer_input` /
`mixer_output` (the input and output of the recurrent or linear-attention mixer) where a block
has one, attention components (per head where the attention has separate q/k/v/o projections)
and `mlp_input` / `mlp_output` (an MLP or a mixture of experts) where it has those. Found from
the module tree, not a table: a child named like a mixer, an attention or an MLP. A module shared
by several blocks (Zamba's shared transformer) is never a component: a hook on it would fire at
every layer that calls it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

MIXERS = ("mixer", "mamba", "linear_attn", "mamba_decoder.mamba", "conv")
ATTENTIONS = ("self_attn", "attn", "attention", "self_attention")
MLPS = ("mlp", "feed_forward", "ffn", "block_sparse_moe", "moe")
O_PROJ = ("o_proj", "out_proj", "dense")
QKV = {"query_output": "q_proj", "key_output": "k_proj", "value_output": "v_proj"}
COMPONENTS = ("mixer_input", "mixer_output")  # only blocks with a recurrent mixer have these


@dataclass(frozen=True)
class Block:
    """The hookable children of one block (names relative to the block; None: absent or shared)."""

    mixer: str | None
    attn: str | None
    mlp: str | None
    o_proj: str | None  # attention output projection (its input = per-head values)
    qkv: bool  # separate q_proj / k_proj / v_proj
    gated_q: bool = False  # q_proj also emits an output gate (Qwen3-Next): no query components


def _child(block: Any, names: tuple[str, ...], common: set[int]) -> str | None:
    for name in names:
        try:
            module = block.get_submodule(name)
        except AttributeError:
            continue
        return None if id(module) in common else name
    return None


def _roles(block: Any, common: set[int]) -> tuple[str | None, str | None, str | None]:
    """(recurrent mixer, attention, MLP) children of a block. A child named `mixer` is whatever its
    class says: NemotronH's blocks each hold one `mixer` — a Mamba-2 mixer, an attention, an MLP or
    a mixture of experts."""
    mixer, attn, mlp = (_child(block, names, common) for names in (MIXERS, ATTENTIONS, MLPS))
    kind = type(block.get_submodule(mixer)).__name__ if mixer else ""
    if kind and not any(word in kind for word in RECURRENT):
        if attn is None and "Attention" in kind:
            return None, mixer, mlp
        if mlp is None and any(word in kind for word in ("MLP", "MoE", "Experts", "FeedForward")):
            return None, attn, mixer
    return mixer, attn, mlp


def per_position(block: Any, common: set[int]) -> list[tuple[str, str]]:
    """(module whose input is the start, module whose output is the end) of each per-position map in
    a block that runs after its sequence mixing: attention and mixer output projections, the MLP."""
    pairs = []
    _, attn, mlp = _roles(block, common)
    mixers = [m for m in MIXERS if m not in (attn, mlp) and _child(block, (m,), common)]
    for parent in ([attn] if attn else []) + mixers:
        out = _child(block.get_submodule(parent), (*O_PROJ, "c_proj"), common)
        if out:
            pairs.append((f"{parent}.{out}", f"{parent}.{out}"))
    if mlp:
        pairs.append(_mlp_pair(block, mlp))
    elif _child(block, ("fc1",), common) and _child(block, ("fc2",), common):
        pairs.append(("fc1", "fc2"))
    elif _child(block, ("intermediate",), common) and _child(block, ("output.dense",), common):
        pairs.append(("intermediate", "output.dense"))  # BERT-style: the add & norm follows
    return pairs


def _mlp_pair(block: Any, mlp: str) -> tuple[str, str]:
    """The MLP itself, or its two linears when its forward also takes the residual (BLOOM, MPT)."""
    import inspect

    import torch

    module = block.get_submodule(mlp)
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return mlp, mlp
    required = [
        p for p in params if p.default is inspect.Parameter.empty and p.kind == p.POSITIONAL_OR_KEYWORD
    ]
    linears = [name for name, child in module.named_children() if isinstance(child, torch.nn.Linear)]
    if len(required) > 1 and len(linears) == 2:
        return f"{mlp}.{linears[0]}", f"{mlp}.{linears[1]}"
    return mlp, mlp


def shared(blocks: list[Any]) -> set[int]:
    """Ids of modules reachable from more than one block."""
    seen: dict[int, int] = {}
    for index, block in enumerate(blocks):
        for module in block.modules():
            if seen.setdefault(id(module), index) != index:
                seen[id(module)] = -1
    return {key for key, owner in seen.items() if owner == -1}


def structure(blocks: list[Any]) -> list[Block] | None:
    """Per block, its mixer / attention / MLP children; None unless some block has a recurrent mixer."""
    common = shared(blocks)
    found = []
    for block in blocks:
        mixer, attn, mlp = _roles(block, common)
        o_proj = _child(block.get_submodule(attn), O_PROJ, common) if attn else None
        qkv = attn is not None and all(_child(block.get_submodule(attn), (p,), common) for p in QKV.values())
        gated = qkv and _gated_query(block.get_submodule(attn))
        found.append(Block(mixer, attn, mlp, o_proj, qkv, gated))
    return found if any(b.mixer for b in found) else None


def _gated_query(attention: Any) -> bool:
    """Whether q_proj is wider than the queries (it also emits a gate), so its output is not them."""
    config = getattr(attention, "config", None)
    heads = getattr(config, "num_attention_heads", None)
    head_dim = getattr(attention, "head_dim", None) or getattr(config, "head_dim", None)
    width = getattr(attention.q_proj, "out_features", None)
    if heads is None or head_dim is None or width is None:
        return False
    return bool(width != heads * head_dim)


def available(block: Block) -> tuple[str, ...]:
    """The components one block offers."""
    names = ["block_input", "block_output"]
    if block.mixer:
        names += ["mixer_input", "mixer_output"]
    if block.attn:
        names += ["attention_input", "attention_output"]
        if block.o_proj:
            names += ["attention_value_output", "head_attention_value_output"]
        if block.qkv:
            qkv = [c for c in QKV if c != "query_output" or not block.gated_q]
            names += [*qkv, *(f"head_{c}" for c in qkv)]
    if block.mlp:
        names += ["mlp_input", "mlp_output"]
    return tuple(names)


def site(
    block: Block, component: str, n_heads: int, n_kv: int, head_dim: int, d_model: int
) -> tuple[str, Literal["input", "output"], int, int]:
    """(module relative to the block, hook side, width, heads) of `component` in `block`."""
    if component in ("block_input", "block_output"):
        return "", "input" if component == "block_input" else "output", d_model, 1
    side: Literal["input", "output"] = "input" if component.endswith("input") else "output"
    if component.startswith("mixer"):
        return str(block.mixer), side, d_model, 1
    if component.startswith("mlp"):
        return str(block.mlp), side, d_model, 1
    if component in ("attention_input", "attention_output"):
        return str(block.attn), side, d_model, 1
    if component.endswith("attention_value_output"):
        heads = n_heads if component.startswith("head_") else 1
        return f"{block.attn}.{block.o_proj}", "input", n_heads * head_dim, heads
    base = component.removeprefix("head_")
    width = (n_heads if base == "query_output" else n_kv) * head_dim
    heads = (n_heads if base == "query_output" else n_kv) if component.startswith("head_") else 1
    return f"{block.attn}.{QKV[base]}", "output", width, heads


def describe_layers(
    blocks: list[Block], order: tuple[str, ...]
) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """(every component some layer has, in `order`; per layer, the ones it has)."""
    per_layer = tuple(tuple(c for c in order if c in available(b)) for b in blocks)
    union = {c for names in per_layer for c in names}
    return tuple(c for c in order if c in union or c == "embedding"), per_layer


def missing(component: str, layer: int, per_layer: tuple[tuple[str, ...], ...], model_type: str) -> str:
    """Why `component` cannot be used at `layer`: which layers do have it."""
    where = [i for i, names in enumerate(per_layer) if component in names]
    kind = "its blocks differ by layer" if where else "no block has it"
    at = f"; it exists at layer{'s' if len(where) > 1 else ''} {', '.join(map(str, where))}" if where else ""
    return f"component {component!r} does not exist at layer {layer} of {model_type} ({kind}){at}"


RECURRENT = (
    "Mamba", "Mixer", "ShortConv", "DeltaNet", "DeltaAttention", "Recurrent", "LinearAttention",
    "Rwkv", "LSTM",
)  # fmt: skip


def recurrent(model: Any) -> bool:
    """Whether the model keeps a recurrent state (SSM, linear attention, short convolution) in its cache."""
    return any(any(word in type(m).__name__ for word in RECURRENT) for m in model.modules())
