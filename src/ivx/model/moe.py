"""Mixture-of-experts blocks: the router's logits and the routed experts' output as components.

A mixture-of-experts feed-forward (`mlp`, `feed_forward`, `block_sparse_moe`, ...) has a router
(`gate` / `router`: a weight `[experts, d_model]`, sometimes a bias) and the experts (`experts`,
one fused module in transformers 5). Two components come from them:

- `router_logits` `[b, s, experts]`: the output of the router's linear map, before any softmax,
  sigmoid, bias correction or top-k. transformers computes the routing from these logits inside
  the router's own forward and returns it with them, so a hook on the router's output could read
  them but an edit there would change nothing. ivx instead intercepts the `linear` call inside the
  router's forward (a `TorchFunctionMode` entered by a pre-hook on the router and left by its
  forward hook, also on exceptions) and passes its output through a stand-in module; the hooks
  on that stand-in read or replace the logits before the router picks its experts, so an edit
  changes the routing: the router's own top-k / softmax / group limits / correction bias run on
  the edited logits. A router whose forward ran without such a call is an error (`RouterError`),
  never a silent no-op.
- `experts_output` `[b, s, d_model]`: the output of the fused experts module — the weighted sum
  of the routed experts, before shared experts (Qwen2-MoE, DeepSeek) are added, so it differs
  from `mlp_output` where those exist.

Single experts are not components: transformers runs an expert only on the tokens routed to it
(inside one fused forward), so a per-expert tensor has no value at the other positions to read
or replace. Found from the module tree (names and parameter sizes), so a skeleton record answers.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any

from ivx.core.errors import UserError

COMPONENTS = ("router_logits", "experts_output")
LOGITS = "router_logits"  # the stand-in's name below the router in a Site's module path
ROUTERS = ("gate", "router")
EXPERTS = "experts"
_PROXIES: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()  # router -> stand-in


class RouterError(UserError):
    """A router whose logits are not the output of one `linear` call inside its forward."""


@dataclass(frozen=True)
class Moe:
    """A block's mixture of experts: paths relative to the block, and the number of routed experts."""

    router: str
    experts: str
    n_experts: int


def _numels(module: Any) -> list[int]:
    return [int(p.numel()) for p in module.parameters()]


def find(block: Any, ffn: str | None, d_model: int) -> Moe | None:
    """The mixture of experts of one block whose feed-forward is `ffn` (relative), or None."""
    if not ffn:
        return None
    try:
        parent = block.get_submodule(ffn)
        experts = parent.get_submodule(EXPERTS)
    except AttributeError:
        return None
    children = sum(n for kid in experts.children() for n in _numels(kid))
    if sum(_numels(experts)) <= children:  # a list of expert modules, not one fused forward
        return None
    kids = dict(parent.named_children())
    for name in ROUTERS:
        sizes = _numels(kids[name]) if name in kids else []
        if len(sizes) == 1 and sizes[0] % d_model == 0 and sizes[0] > d_model:
            return Moe(f"{ffn}.{name}", f"{ffn}.{EXPERTS}", sizes[0] // d_model)
        if len(sizes) == 2 and max(sizes) == min(sizes) * d_model and min(sizes) > 1:  # weight and bias
            return Moe(f"{ffn}.{name}", f"{ffn}.{EXPERTS}", min(sizes))
    return None


def available(found: Moe | None) -> tuple[str, ...]:
    """The components a block with this mixture of experts (or none) offers."""
    return COMPONENTS if found is not None else ()


def extend(
    components: tuple[str, ...],
    per_layer: tuple[tuple[str, ...], ...],
    found: Sequence[Moe | None],
    order: tuple[str, ...],
) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """(components, per-layer components) with each MoE block's components added."""
    if not any(found):
        return components, per_layer
    base = per_layer or tuple(tuple(c for c in components if c != "embedding") for _ in found)
    pairs = zip(base, found, strict=True)
    layers = tuple(tuple(c for c in order if c in names or c in available(f)) for names, f in pairs)
    union = {c for names in layers for c in names} | set(components)
    return tuple(c for c in order if c in union), layers


def site(found: Moe, component: str, d_model: int) -> tuple[str, int]:
    """(module path relative to the block, width) of a MoE component; both are output hooks."""
    if component == "router_logits":
        return f"{found.router}.{LOGITS}", found.n_experts
    return found.experts, d_model


def is_logits(path: str) -> bool:
    """Whether a Site's module path is a router's logits stand-in."""
    return path.rsplit(".", 1)[-1] == LOGITS


def module(model: Any, path: str) -> Any:
    """The module at `path`; for a router's logits, the stand-in module its hooks go on."""
    if not is_logits(path):
        return model.get_submodule(path)
    import torch

    router = model.get_submodule(path.rsplit(".", 1)[0])
    if router not in _PROXIES:  # not a child of the router: never in named_modules or state_dict
        _PROXIES[router] = torch.nn.Identity()
    return _PROXIES[router]


@cache
def _mode_class() -> Any:
    """A TorchFunctionMode that passes the first `linear` output with the router's weight shape
    through the stand-in (the class is built on first use: torch is imported lazily)."""
    import torch
    from torch.overrides import TorchFunctionMode

    linears = {torch.nn.functional.linear, torch._C._nn.linear}

    class Intercept(TorchFunctionMode):
        def __init__(self, proxy: Any, shape: tuple[int, ...], state: dict[str, int]) -> None:
            super().__init__()
            self.proxy, self.shape, self.state, self.done = proxy, shape, state, False

        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            out = func(*args, **(kwargs or {}))
            weight = args[1] if len(args) > 1 else (kwargs or {}).get("weight")
            if not self.done and func in linears and tuple(getattr(weight, "shape", ())) == self.shape:
                self.done = True
                self.state["matched"] += 1
                out = self.proxy(out)  # [tokens, experts] (or [b, s, experts])
            return out

    return Intercept


def _weight_shape(router: Any) -> tuple[int, ...]:
    """The shape of the router's matrix (its one 2-D parameter, or a linear child's)."""
    return next(tuple(p.shape) for p in router.parameters() if p.dim() == 2)


@contextmanager
def exposing(model: Any, paths: Sequence[str]) -> Iterator[None]:
    """While inside, each router named by a logits path in `paths` passes its logits through its
    stand-in (once per router, however many ivx hooks are active on it)."""
    routers = {p: model.get_submodule(p.rsplit(".", 1)[0]) for p in dict.fromkeys(paths) if is_logits(p)}
    handles = []
    states: dict[int, dict[str, int]] = {}
    try:
        for path, router in routers.items():
            if id(router) in _ACTIVE:  # an outer `exposing` already intercepts it
                continue
            _ACTIVE.add(id(router))
            states[id(router)] = state = {"ran": 0, "matched": 0}
            handles += _intercept(router, module(model, path), state)
        yield
        for path, router in routers.items():
            state = states.get(id(router), {})
            if state.get("ran") and not state.get("matched"):
                raise RouterError(
                    f"{path.rsplit('.', 1)[0]} ({type(router).__name__}) computed its routing without a "
                    f"linear call on its {list(_weight_shape(router))} weight, so ivx cannot read or edit "
                    "its logits: router_logits is not available on this model"
                )
    finally:
        for handle in handles:
            handle.remove()
        for key in states:
            _ACTIVE.discard(key)


_ACTIVE: set[int] = set()  # ids of the routers whose logits are being intercepted


def _intercept(router: Any, proxy: Any, state: dict[str, int]) -> list[Any]:
    """Hooks that enter the interception mode around each forward of `router`."""
    shape = _weight_shape(router)
    modes: list[Any] = []

    def enter(mod: Any, args: Any) -> None:
        state["ran"] += 1
        mode = _mode_class()(proxy, shape, state)
        mode.__enter__()
        modes.append(mode)

    def leave(mod: Any, args: Any, output: Any) -> None:
        if modes:
            modes.pop().__exit__(None, None, None)

    return [
        router.register_forward_pre_hook(enter),
        router.register_forward_hook(leave, always_call=True),
    ]
