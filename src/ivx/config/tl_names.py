"""TransformerLens hook names as aliases of ivx components (or refused, naming the ivx site).

TransformerLens (`HookedTransformer`) names its hook points `blocks.{L}.hook_resid_pre`,
`blocks.{L}.attn.hook_z`, ... A TransformerLens user can write those names as a `component`
(with or without the `blocks.{L}.` prefix, which then sets the layer); each one maps to the ivx
component that reads the same tensor, or is refused with the nearest ivx site and why it differs.
Pure data, no torch.
"""

from __future__ import annotations

import re
from typing import Any

# TransformerLens hook name (after `blocks.{L}.`) → the ivx component reading the same tensor
ALIASES: dict[str, str] = {
    "hook_embed": "embedding",
    "hook_resid_pre": "block_input",
    "hook_resid_mid": "residual_mid",
    "hook_resid_post": "block_output",
    "hook_attn_out": "attention_output",
    "hook_mlp_out": "mlp_output",
    "attn.hook_z": "head_attention_value_output",
    "attn.hook_q": "head_query_output",
    "attn.hook_k": "head_key_output",
    "attn.hook_v": "head_value_output",
    "attn.hook_pattern": "head_attention_pattern",
    "mlp.hook_post": "mlp_activation",
}

# TransformerLens hook names without an ivx equivalent → why, and the ivx site to use instead
REFUSED: dict[str, str] = {
    "attn.hook_result": "ivx has no per-head site after W_O; a head's result is its "
    "head_attention_value_output (attn.hook_z) times W_O, so patching hook_z patches hook_result",
    "attn.hook_attn_scores": "ivx has no pre-softmax scores site; use head_attention_pattern "
    "(attn.hook_pattern, the probabilities)",
    "attn.hook_rot_q": "ivx reads queries before the rotary embedding: head_query_output (attn.hook_q)",
    "attn.hook_rot_k": "ivx reads keys before the rotary embedding: head_key_output (attn.hook_k)",
    "mlp.hook_pre": "ivx has no MLP pre-activation site; mlp_activation is mlp.hook_post, "
    "mlp_input the normalised MLP input",
    "hook_pos_embed": "ivx has no position-embedding site; embedding is the token embeddings "
    "(hook_embed), block_input at layer 0 their sum with the position embeddings (hook_resid_pre)",
    "ln1.hook_normalized": "TransformerLens normalises before the norm's weights; ivx's "
    "attention_input is the norm's output with its weight and bias applied",
    "ln2.hook_normalized": "TransformerLens normalises before the norm's weights; ivx's "
    "mlp_input is the norm's output with its weight and bias applied",
    "hook_mlp_in": "ivx's mlp_input is after the norm; the residual before it is residual_mid "
    "(hook_resid_mid)",
    "hook_attn_in": "ivx's attention_input is after the norm; the residual before it is "
    "block_input (hook_resid_pre)",
    "mlp.hook_expert_weights": "TransformerLens hooks the softmax over every expert; ivx's "
    "router_logits is the router's output before it (an edit there re-routes the token)",
    "mlp.hook_expert_indices": "ivx has no site for the chosen experts' indices (integers); edit "
    "router_logits to change which experts a token goes to",
}

_PREFIX = re.compile(r"^blocks\.(-?[0-9]{1,6})\.(.+)$")


def split(name: str) -> tuple[int | None, str]:
    """(layer or None, hook name) of `blocks.3.attn.hook_z` / `attn.hook_z`."""
    match = _PREFIX.match(name)
    return (int(match.group(1)), match.group(2)) if match else (None, name)


def is_tl(name: Any) -> bool:
    """True when `name` reads as a TransformerLens hook name (known or not)."""
    return isinstance(name, str) and ("hook_" in name or _PREFIX.match(name) is not None)


def component(name: str) -> str:
    """The ivx component of a TransformerLens hook name; ValueError naming the ivx site if none."""
    layer, hook = split(name)
    if layer is not None:  # an intervention's `component` had its prefix taken as its layer
        raise ValueError(
            f"{name!r}: a blocks.N. prefix sets the layer only in an intervention's or receiver's own "
            f"`component`; here write {hook!r} and give the layer separately"
        )
    if hook in ALIASES:
        return ALIASES[hook]
    if hook in REFUSED:
        raise ValueError(f"TransformerLens hook {name!r} has no ivx equivalent: {REFUSED[hook]}")
    import difflib

    near = difflib.get_close_matches(hook, list(ALIASES), n=1)
    hint = f"did you mean {near[0]!r} (ivx: {ALIASES[near[0]]})? " if near else ""
    raise ValueError(
        f"unknown TransformerLens hook {name!r}; {hint}known: {', '.join(ALIASES)} "
        "(with or without a blocks.N. prefix)"
    )


def tl_name(ivx_component: str) -> str:
    """The TransformerLens hook name of an ivx component ('' when it has none)."""
    return next((tl for tl, ours in ALIASES.items() if ours == ivx_component), "")


def with_layer(data: Any) -> Any:
    """An intervention or receiver mapping whose `component: blocks.L.<hook>` also sets `layer: L`."""
    if not isinstance(data, dict) or not isinstance(data.get("component"), str):
        return data
    layer, hook = split(data["component"])
    if layer is None:
        return data
    given = data.get("layer")
    if given is not None and given != layer:
        raise ValueError(
            f"component {data['component']!r} names layer {layer} but `layer` is {given!r}: "
            f"give the layer once (component: {hook}, layer: {given!r})"
        )
    return {**data, "component": hook, "layer": layer}
