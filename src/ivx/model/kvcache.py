"""The transformers KV-cache API across releases: argument name, returned cache, layer tensors.

transformers 5.24 renamed the forward argument `past_key_values` to `cache` (the old name is
deprecated, to be removed in 5.40) and returns the cache as `out.cache`; releases before keep
`past_key_values`. Older 4.x caches hold `key_cache`/`value_cache` lists instead of `layers`.
Everything ivx does with a KV cache goes through these functions, so a release that changes the
API again breaks in one place — and the shortcut engagement tests notice.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from ivx.model import mixers

if TYPE_CHECKING:
    import torch


def argument(forward: Any) -> str:
    """Name of the KV-cache keyword `forward` accepts (`cache` on transformers >= 5.24)."""
    try:
        params = inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params and "past_key_values" not in params else "past_key_values"


def returned(out: Any) -> Any:
    """The cache a forward returned (`out.cache` or `out.past_key_values`), or None."""
    for name in ("cache", "past_key_values"):
        value = out.get(name) if hasattr(out, "get") else getattr(out, name, None)
        if value is not None:
            return value
    return None


def no_prefix_state(model: Any, cache: Any = None) -> str | None:
    """Why a cache of this model cannot be cut to a prefix (None: it can, a KV cache).

    A state-space or linear-attention layer keeps one state per sequence, the state after its
    last token; continuing from position p needs the state at p, which transformers' caches do
    not keep (`LinearAttentionLayer` has the final state only), so ivx recomputes it by running
    the prefix alone (`ShortcutState.past`). Known from the model's modules, or from a `cache`
    it returned that holds such layers.
    """
    held = [layer for layer in getattr(cache, "layers", None) or [] if hasattr(layer, "conv_states")]
    if not (mixers.recurrent(model) or held):
        return None
    return (
        "recurrent layers (state-space, linear attention or short convolution): transformers' cache keeps "
        "only the state after the last token, not the state at the reused prefix's end"
    )


def select_rows(cache: Any, index: torch.Tensor, rows_per_layer: list[int]) -> Any:
    """A new cache whose batch rows are `cache`'s rows `index`, per layer only the first
    `rows_per_layer[layer]` of them (the rows that run that layer, see `stagger`).

    Works on any cache layer type (keys and values, convolution and recurrent states, indexer
    keys): every tensor attribute, or tensor in a dict attribute, whose first axis is the batch is
    selected; everything else is copied. The result shares no tensor with `cache`, which the
    forward that continues from it updates in place.
    """
    import copy

    import torch

    batch = _batch(cache)

    def take(value: Any, idx: torch.Tensor) -> Any:
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == batch:
            return value.index_select(0, idx.to(value.device))
        if isinstance(value, dict) and any(isinstance(v, torch.Tensor) for v in value.values()):
            return {k: take(v, idx) for k, v in value.items()}
        return copy.copy(value) if isinstance(value, (dict, list)) else value

    new = copy.copy(cache)
    new.layers = []
    for number, layer in enumerate(cache.layers):
        idx = index[: rows_per_layer[number]] if number < len(rows_per_layer) else index
        clone = copy.copy(layer)
        for name, value in vars(layer).items():
            setattr(clone, name, take(value, idx))
        if isinstance(getattr(clone, "batch_size", None), int):
            clone.batch_size = len(idx)
        new.layers.append(clone)
    return new


def state_tensors(cache: Any, rows: slice) -> list[torch.Tensor]:
    """Copies of every batched tensor a cache holds (keys, values, convolution and recurrent
    states), rows `rows` of each, in a fixed order: two caches of one model compare tensor by tensor."""
    import torch

    batch = _batch(cache)
    out = []
    for layer in cache.layers:
        for _, value in sorted(vars(layer).items()):
            tensors = [v for _, v in sorted(value.items())] if isinstance(value, dict) else [value]
            out += [
                t[rows].detach().clone()
                for t in tensors
                if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[0] == batch
            ]
    return out


def _batch(cache: Any) -> int:
    """The batch rows a cache holds (the first axis of its first initialized state)."""
    import torch

    for layer in cache.layers:
        for value in vars(layer).values():
            tensors = value.values() if isinstance(value, dict) else [value]
            for tensor in tensors:
                if isinstance(tensor, torch.Tensor) and tensor.dim() >= 2:
                    return int(tensor.shape[0])
    raise TypeError("the cache holds no batched state")


def layers(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) per layer, each [rows, kv_heads, seq, head_dim]; TypeError for a recurrent layer."""
    cache = getattr(cache, "self_attention_cache", cache)  # an EncoderDecoderCache (BERT-style decoders)
    if hasattr(cache, "layers"):
        kinds = [type(layer).__name__ for layer in cache.layers if not hasattr(layer, "keys")]
        if kinds:
            raise TypeError(f"cache layers without keys and values: {', '.join(sorted(set(kinds)))}")
        if any(getattr(layer, "indexer_keys", None) is not None for layer in cache.layers):
            raise TypeError("the cache also holds sparse-attention indexer keys, which ivx does not rebuild")
        pairs = [(layer.keys, layer.values) for layer in cache.layers]
        while pairs and pairs[-1][0] is None:  # layers the config counts but no block uses (BART's
            pairs.pop()  # causal LM sizes its cache by the encoder's layer count)
        return pairs
    return list(zip(cache.key_cache, cache.value_cache, strict=True))  # transformers 4.x


def build(config: Any, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    """A DynamicCache holding the given per-layer (keys, values)."""
    from transformers import DynamicCache

    try:
        cache = DynamicCache(config=config)
    except TypeError:  # transformers 4.x
        cache = DynamicCache()
    for layer, (keys, values) in enumerate(pairs):
        cache.update(keys, values, layer)
    return cache
