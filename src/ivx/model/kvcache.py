"""The transformers KV-cache API across releases: argument name, returned cache, layer tensors.

transformers 5.24 renamed the forward argument `past_key_values` to `cache` (the old name is
deprecated, to be removed in 5.40) and returns the cache as `out.cache`; releases before keep
`past_key_values`. Older 4.x caches hold `key_cache`/`value_cache` lists instead of `layers`.
Everything ivx does with a KV cache goes through these functions, so a release that changes the
API again breaks in one place — and the shortcut engagement tests notice.

A cache ivx cuts to a prefix holds, per layer, keys and values and (DeepSeek-V3.2's sparse
attention, `DynamicIndexedLayer`) the indexer's keys, every position of the run in each; any
other cache (recurrent states, a sliding window shorter than the prompt, compressed entries) is
refused with the reason, and prefix reuse recomputes the prefix instead (`engine.recurrent_prefix`).
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


def no_cache(model: Any, model_type: str) -> str:
    """Why a model that returned no cache has none to continue from."""
    params = _parameters(model.forward)
    if "state" in params and not params & {"cache", "past_key_values"}:  # RWKV
        return f"{model_type} returns its recurrent state as `state`, not a cache ivx continues from"
    return f"{model_type} returns no KV cache"


def _parameters(forward: Any) -> set[str]:
    try:
        return set(inspect.signature(forward).parameters)
    except (TypeError, ValueError):
        return set()


def no_prefix_state(model: Any, cache: Any = None) -> str | None:
    """Why a cache of this model cannot be cut to a prefix (None: it can, a KV cache).

    A state-space or linear-attention layer keeps one state per sequence, the state after its
    last token; continuing from position p needs the state at p, which transformers' caches do
    not keep (`LinearAttentionLayer` has the final state only), so ivx recomputes it by running
    the prefix alone (`ShortcutState.past`). Known from the model's modules, or from a `cache`
    it returned that holds such layers or such states beside its layers (MiniMax's `linear_cache`).
    """
    held = [layer for layer in getattr(cache, "layers", None) or [] if hasattr(layer, "conv_states")]
    if not (mixers.recurrent(model) or held or _side_states(cache)):
        return None
    return (
        "recurrent layers (state-space, linear attention or short convolution): transformers' cache keeps "
        "only the state after the last token, not the state at the reused prefix's end"
    )


def _side_states(cache: Any) -> dict[str, list[Any]]:
    """Per-layer lists of states a cache keeps beside its `layers` (MiniMax's lightning attention
    keeps `linear_cache[layer]`, [rows, heads, head_dim, head_dim]), by attribute name."""
    import torch

    found = {}
    for name, value in (vars(cache) if cache is not None and hasattr(cache, "layers") else {}).items():
        if name != "layers" and isinstance(value, list) and any(isinstance(v, torch.Tensor) for v in value):
            found[name] = value
    return found


def select_rows(cache: Any, index: torch.Tensor, rows_per_layer: list[int]) -> Any:
    """A new cache whose batch rows are `cache`'s rows `index`, per layer only the first
    `rows_per_layer[layer]` of them (the rows that run that layer, see `stagger`).

    Works on any cache layer type (keys and values, convolution and recurrent states, indexer
    keys): every tensor attribute, or tensor in a dict attribute, whose first axis is the batch is
    selected; everything else is copied; per-layer state lists beside the layers likewise. The
    result shares no tensor with `cache`, which the forward that continues from it updates in place.
    """
    import copy

    import torch

    batch = _batch(cache)

    def take(value: Any, idx: torch.Tensor, axis: int = 0) -> Any:
        if isinstance(value, torch.Tensor) and value.dim() > axis and value.shape[axis] == batch:
            return value.index_select(axis, idx.to(value.device))
        if isinstance(value, dict) and any(isinstance(v, torch.Tensor) for v in value.values()):
            return {k: take(v, idx) for k, v in value.items()}
        return copy.copy(value) if isinstance(value, (dict, list)) else value

    def layer_index(number: int) -> torch.Tensor:
        return index[: rows_per_layer[number]] if number < len(rows_per_layer) else index

    new = copy.copy(cache)
    new.layers = []
    for number, layer in enumerate(cache.layers):
        idx = layer_index(number)
        clone = copy.copy(layer)
        for name, value in vars(layer).items():
            setattr(clone, name, take(value, idx, BATCH_AXIS.get(name, 0)))
        if isinstance(getattr(clone, "batch_size", None), int):
            clone.batch_size = len(idx)
        new.layers.append(clone)
    for name, states in _side_states(cache).items():
        setattr(new, name, [take(value, layer_index(number)) for number, value in enumerate(states)])
    return new


BATCH_AXIS = {"indexer_position_ids": 1}  # [position_dims, rows, seq] (Qwen4's indexer); others: 0


def state_tensors(cache: Any, rows: slice) -> list[torch.Tensor]:
    """Copies of every batched tensor a cache holds (keys, values, convolution and recurrent
    states), rows `rows` of each, in a fixed order: two caches of one model compare tensor by tensor."""
    import torch

    batch = _batch(cache)
    out = []
    holders = [vars(layer) for layer in cache.layers] + [
        dict(enumerate(v)) for _, v in sorted(_side_states(cache).items())
    ]
    for held in holders:
        for _, value in sorted(held.items()):
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

    holders = [vars(layer).values() for layer in cache.layers] + list(_side_states(cache).values())
    for held in holders:
        for value in held:
            tensors = value.values() if isinstance(value, dict) else [value]
            for tensor in tensors:
                if isinstance(tensor, torch.Tensor) and tensor.dim() >= 2:
                    return int(tensor.shape[0])
    raise TypeError("the cache holds no batched state")


def layers(cache: Any, length: int | None = None) -> list[tuple[torch.Tensor, ...]]:
    """Per layer (keys, values), each [rows, kv_heads, seq, head_dim], and for a sparse-attention
    layer its indexer keys, [rows, seq, index_dim]; TypeError for a cache that cannot be cut to a
    prefix: a layer holding other states, or (given the run's `length`) fewer positions."""
    cache = getattr(cache, "self_attention_cache", cache)  # an EncoderDecoderCache (BERT-style decoders)
    if cache is None:
        raise TypeError("the model returned no cache")
    if hasattr(cache, "layers"):
        kinds = [type(layer).__name__ for layer in cache.layers if not hasattr(layer, "keys")]
        if kinds:
            raise TypeError(f"cache layers without keys and values: {', '.join(sorted(set(kinds)))}")
        if _side_states(cache):
            raise TypeError(f"the cache holds states beside its layers: {', '.join(_side_states(cache))}")
        entries = [_entries(layer, length) for layer in cache.layers]
        while entries and entries[-1][0] is None:  # layers the config counts but no block uses (BART's
            entries.pop()  # causal LM sizes its cache by the encoder's layer count)
        return entries
    return list(zip(cache.key_cache, cache.value_cache, strict=True))  # transformers 4.x


def _entries(layer: Any, length: int | None) -> tuple[Any, ...]:
    """One layer's (keys, values[, indexer keys]); TypeError for state ivx cannot cut."""
    import torch

    name = type(layer).__name__
    other = [
        key
        for key, value in vars(layer).items()
        if key not in CUT
        and (
            (isinstance(value, torch.Tensor) and value.dim() >= 1)
            or (isinstance(value, dict) and any(isinstance(v, torch.Tensor) for v in value.values()))
        )
    ]
    if other or getattr(layer, "indexer_position_ids", None) is not None:
        raise TypeError(f"{name} also holds {', '.join(other) or 'indexer positions'}")
    if length is not None and layer.keys is not None and layer.keys.shape[-2] != length:
        raise TypeError(f"{name} keeps {layer.keys.shape[-2]} of {length} positions (a sliding window)")
    indexer = getattr(layer, "indexer_keys", None)
    if indexer is not None and indexer.numel():  # DynamicIndexedLayer (DeepSeek-V3.2's sparse attention)
        return (layer.keys, layer.values, indexer)
    return (layer.keys, layer.values)


CUT = ("keys", "values", "indexer_keys")  # the states ivx cuts to a prefix
SEQ_AXIS = (2, 2, 1)  # the sequence axis of keys, values and indexer keys


def rows(entries: list[tuple[torch.Tensor, ...]], picked: slice) -> list[tuple[torch.Tensor, ...]]:
    """Copies of rows `picked` of every layer's entries (see `layers`)."""
    return [tuple(t[picked].clone() for t in layer) for layer in entries]


def cut(parts: list[tuple[torch.Tensor, ...]], prefix: int, keep: int) -> tuple[torch.Tensor, ...]:
    """One layer's entries of several prompts as one batch: the first `prefix` positions, the
    first `keep` rows."""
    import torch

    return tuple(
        torch.cat([p[i].narrow(SEQ_AXIS[i], 0, prefix) for p in parts])[:keep] for i in range(len(parts[0]))
    )


def build(config: Any, entries: list[tuple[torch.Tensor, ...]]) -> Any:
    """A DynamicCache holding the given per-layer (keys, values[, indexer keys])."""
    from transformers import DynamicCache

    try:
        cache = DynamicCache(config=config)
    except TypeError:  # transformers 4.x
        cache = DynamicCache()
    for layer, (keys, values, *indexer) in enumerate(entries):
        cache.update(keys, values, layer)
        if indexer:
            cache.update_indexer(indexer[0], layer)
    return cache
