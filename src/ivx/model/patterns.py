"""Attention patterns as hook points: the softmax probabilities of chosen attention modules.

The fast attention kernels (sdpa, flash) never form the [query, key] probabilities, so a pattern
cannot be read or written with a module hook. Inside `intercepting`, only the attention modules
that carry a pattern site run ivx's eager attention instead — the same arithmetic as the
transformers eager functions (scores · scaling + mask, float32 softmax, probabilities @ values),
with the probabilities handed to a callback that reads or replaces them; the head's output is then
recomputed from the (patched) pattern and the head's own values. Every other module keeps its
implementation. The switch is local: each intercepted module sees a copy of the model config
whose `_attn_implementation` names ivx's function, restored on exit, also on exceptions.

GQA: keys and values are repeated per query head first, so a pattern is per query head.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ivx.core.errors import UserError

if TYPE_CHECKING:
    import torch

NAME = "ivx_pattern"  # the attention implementation ivx registers with transformers
PatternFn = Callable[["torch.Tensor"], "torch.Tensor | None"]  # [b, heads, q, k] -> new or None
_ACTIVE: dict[int, list[PatternFn]] = {}  # id(attention module) -> callbacks, inside `intercepting`
_FIRED: dict[int, int] = {}  # id(attention module) -> calls of `eager_attention`, inside `intercepting`


class PatternError(UserError):
    """An attention module that computes its probabilities outside transformers' interface."""


def additive_mask(
    mask: torch.Tensor | None, q_len: int, k_len: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """The mask an eager softmax adds: [.., q, k] (0 where a query sees a key, the dtype's min elsewhere).

    sdpa masks are boolean (True: attend) or None when the kernel's own causal mask applies; a
    query then sits at the end of the keys (a KV cache holds the earlier ones)."""
    import torch

    low = torch.finfo(dtype).min
    if mask is None:
        query = torch.arange(k_len - q_len, k_len, device=device)[:, None]
        allowed = query >= torch.arange(k_len, device=device)[None, :]  # [q, k]
        return torch.zeros((), dtype=dtype, device=device).masked_fill(~allowed, low)
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(~mask, low)[..., :k_len]
    return mask[..., :k_len].to(dtype)


def eager_attention(
    module: Any,
    query: torch.Tensor,  # [b, heads, q, hd]
    key: torch.Tensor,  # [b, kv_heads, k, hd]
    value: torch.Tensor,  # [b, kv_heads, k, hd]
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention whose probabilities pass through the module's pattern callbacks."""
    import torch

    repeat = query.shape[1] // key.shape[1]
    if repeat > 1:  # GQA: one key/value head serves `repeat` query heads
        key = key.repeat_interleave(repeat, dim=1)
        value = value.repeat_interleave(repeat, dim=1)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scale  # [b, heads, q, k]
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    mask = additive_mask(attention_mask, query.shape[2], key.shape[2], scores.dtype, scores.device)
    probs = torch.softmax(scores + mask, dim=-1, dtype=torch.float32).to(query.dtype)  # [b, heads, q, k]
    if id(module) in _FIRED:
        _FIRED[id(module)] += 1
    for fn in _ACTIVE.get(id(module), []):
        new = fn(probs)
        if new is not None:
            probs = new.to(query.dtype)
    out = torch.matmul(probs, value).transpose(1, 2).contiguous()  # [b, q, heads, hd]
    return out, probs


def supported(attention: Any) -> bool:
    """Whether this attention module dispatches through transformers' attention interface.

    Only such modules can be routed through `eager_attention`; older ports that compute attention
    in their own method (GPT-J before transformers 5.24, for one) keep their implementation, so
    ivx does not offer a pattern site on them."""
    import inspect
    import sys

    module = sys.modules.get(type(attention).__module__)
    try:
        source = inspect.getsource(module) if module is not None else ""
    except (OSError, TypeError):
        return False
    return "ALL_ATTENTION_FUNCTIONS" in source


def _register() -> None:
    """Make ivx's eager attention known to transformers (idempotent)."""
    from transformers.modeling_utils import AttentionInterface

    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, eager_attention)


@contextmanager
def intercepting(model: Any, callbacks: dict[str, list[PatternFn]]) -> Iterator[None]:
    """Route the attention modules at these paths through `eager_attention` with their callbacks.

    A module that ran inside the block without ever calling `eager_attention` computes attention
    its own way: PatternError on exit (its pattern was neither read nor written)."""
    _register()
    swapped: list[tuple[Any, Any]] = []
    ran: dict[int, int] = {}
    handles = []
    try:
        for path, fns in callbacks.items():
            module = model.get_submodule(path)
            _ACTIVE.setdefault(id(module), []).extend(fns)
            _FIRED.setdefault(id(module), 0)
            ran[id(module)] = 0

            def count(mod: Any, args: Any) -> None:
                ran[id(mod)] += 1

            handles.append(module.register_forward_pre_hook(count))
            if getattr(module.config, "_attn_implementation", None) != NAME:
                local = copy.copy(module.config)
                local._attn_implementation_internal = NAME
                swapped.append((module, module.config))
                module.config = local
        before = {key: _FIRED[key] for key in ran}
        yield
        for path in callbacks:
            key = id(model.get_submodule(path))
            if ran[key] and _FIRED.get(key, 0) == before[key]:
                raise PatternError(
                    f"{path} ({type(model.get_submodule(path)).__name__}) computes attention outside "
                    "transformers' attention interface, so ivx cannot read or write its pattern; "
                    "head_attention_pattern is not available on this model with this transformers version"
                )
    finally:
        for handle in handles:
            handle.remove()
        for module, config in swapped:
            module.config = config
        for path, fns in callbacks.items():
            active = _ACTIVE.get(id(model.get_submodule(path)), [])
            for fn in fns:
                if fn in active:
                    active.remove(fn)
            if not active:
                _ACTIVE.pop(id(model.get_submodule(path)), None)
                _FIRED.pop(id(model.get_submodule(path)), None)
