"""Hand-written hooks: the oracle the coverage table compares ivx with.

For one component site (ivx's `Site`: module, input or output side, and the slice of that tensor
that is the component) the oracle captures the source prompt's value with a plain forward hook,
then runs the base prompt with a second plain hook that writes that value at one position (one
head, if given) and returns the last position's logits. No KV cache, no batching, no ivx code on
the forward path: only `torch` and the module tree. Independent facts about the blocks come from
`output_hidden_states`.

Mixture-of-experts components get hooks of their own, at other points than ivx's: `router_logits`
is recomputed by hand from the router's input (`input @ W.T + b`, the router's matrix and bias
read from its parameters) and written by moving the router's input `h` to `h + W⁺(target − Wh − b)`
(W⁺ the pseudo-inverse; routers have fewer experts than the width, so every logit vector is
reachable), which the router then routes with its own code. `experts_output` is the experts
module's output, read and written with a plain hook like every other module output (the MoE
block's output is not always experts + shared: Cohere2-MoE averages them, MiniMax-M3 scales the
experts' sum first; tests/model/test_moe_components.py recomputes the experts by hand).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def _tensor(value: Any) -> Any:
    """The hidden-state tensor inside a module output (first element of a tuple)."""
    return value[0] if isinstance(value, tuple | list) else value


def _view(raw: Any, seq: int) -> Any:
    """`raw` as [b, s, width] (some blocks work on flattened [b*s, width] tokens)."""
    return raw.view(-1, seq, raw.shape[-1]) if raw.dim() == 2 else raw


def _slice(site: Any, raw3: Any) -> Any:
    """The component [b, s, groups, hi-lo] view inside a [b, s, groups*width] tensor."""
    return raw3.view(*raw3.shape[:-1], site.groups, site.width)[..., site.lo : site.hi]


@contextmanager
def _hook(module: Any, side: str, fn: Any) -> Iterator[None]:
    """One plain hook on `module`'s input (`fn(tensor) -> tensor | None`) or output."""
    if side == "output":

        def out_hook(mod: Any, args: Any, output: Any) -> Any:
            new = fn(_tensor(output))
            if new is None:
                return None
            if isinstance(output, list):  # OpenAI GPT's blocks return lists
                return [new, *output[1:]]
            return (new, *output[1:]) if isinstance(output, tuple) else new

        handle = module.register_forward_hook(out_hook)
    else:

        def in_hook(mod: Any, args: tuple, kwargs: dict) -> Any:
            if args:
                new = fn(args[0])
                return None if new is None else ((new, *args[1:]), kwargs)
            key = next(k for k in ("hidden_states", "x", "input", "inputs") if k in kwargs)
            new = fn(kwargs[key])
            return None if new is None else (args, {**kwargs, key: new})

        handle = module.register_forward_pre_hook(in_hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _forward(model: Any, ids: Any) -> Any:
    import torch

    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits[0, -1].float()  # [vocab]


def _router(model: Any, site: Any) -> tuple[Any, Any, Any]:
    """(router module, its [experts, d] matrix, its bias or None) of a router_logits site."""
    router = model.get_submodule(site.module.rsplit(".", 1)[0])
    params = list(router.parameters())
    weight = next(p for p in params if p.dim() == 2)
    bias = next((p for p in params if p.dim() == 1), None)
    return router, weight, bias


def _logits(hidden: Any, weight: Any, bias: Any) -> Any:
    """Router logits computed by hand: hidden @ W.T (+ b), in float64."""
    out = hidden.double() @ weight.double().T  # [..., experts]
    return out + bias.double() if bias is not None else out


def capture(model: Any, site: Any, ids: Any) -> Any:
    """The component `[s, groups, hi-lo]` of `site` over prompt `ids` [1, s]."""
    seen: dict[str, Any] = {}
    if site.component == "router_logits":
        router, weight, bias = _router(model, site)

        def read_input(raw: Any) -> None:
            if "value" not in seen:
                hidden = _view(raw, ids.shape[1])[0]  # [s, d]
                seen["value"] = _logits(hidden, weight, bias).float()[:, None, :]  # [s, 1, experts]

        with _hook(router, "input", read_input):
            _forward(model, ids)
        return seen["value"]

    def read(raw: Any) -> None:
        if "value" not in seen:  # the first call: a module shared by several blocks runs again later
            seen["value"] = _slice(site, _view(raw, ids.shape[1]))[0].detach().clone()

    with _hook(model.get_submodule(site.module), site.hook, read):
        _forward(model, ids)
    return seen["value"]


def _router_patched(model: Any, site: Any, base_ids: Any, source: Any, position: int) -> Any:
    """Logits with the router's input moved so that its logits at `position` are `source`'s."""
    import torch

    router, weight, bias = _router(model, site)

    def write(raw: Any) -> Any:
        out = raw.clone()
        hidden = _view(out, base_ids.shape[1])[0, position]  # [d] view
        target = source[position].reshape(-1).double() - _logits(hidden, weight, bias)  # [experts]
        hidden += (torch.linalg.pinv(weight.double()) @ target).to(hidden.dtype)
        return out

    with _hook(router, "input", _once(write)):
        return _forward(model, base_ids)


def _once(fn: Any) -> Any:
    """`fn` on the first call only (a module shared by several blocks runs again later)."""
    calls = {"n": 0}

    def wrapped(raw: Any) -> Any:
        calls["n"] += 1
        return fn(raw) if calls["n"] == 1 else None

    return wrapped


def patched_logits(model: Any, site: Any, base_ids: Any, source: Any, position: int, head: int | None) -> Any:
    """Last-position logits of the base prompt with `site` at `position` (one head) set to `source`."""
    if site.component == "router_logits":
        return _router_patched(model, site, base_ids, source, position)
    calls = {"n": 0}

    def write(raw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] > 1:
            return None
        out = raw.clone()
        part = _slice(site, _view(out, base_ids.shape[1]))[0, position]  # [groups, hi-lo] view
        new = source[position]
        if head is None:
            part.copy_(new)
        else:  # heads are consecutive head_dim chunks of the component vector
            flat, flat_new = part.reshape(-1).clone(), new.reshape(-1)
            width = flat.shape[0] // site.n_heads
            flat[head * width : (head + 1) * width] = flat_new[head * width : (head + 1) * width]
            part.copy_(flat.view_as(part))
        return out

    with _hook(model.get_submodule(site.module), site.hook, write):
        return _forward(model, base_ids)


def hidden_states(model: Any, ids: Any) -> tuple[Any, ...]:
    """`output_hidden_states` of a plain forward: (embeddings, block 0 output, ...)."""
    import torch

    with torch.no_grad():
        return tuple(model(input_ids=ids, use_cache=False, output_hidden_states=True).hidden_states)
