"""Forward hooks that read and write component slices, one hook per touched module.

A `Patch` is one vectorised edit: the same function applied to many (row, position) pairs of
one component at one module, with per-pair source values. All patches of a module run inside a
single hook, without a Python loop over rows. Hooks live inside `with` blocks that remove them
also on exceptions, and hooks that ivx did not register are never touched.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ivx.core.interventions import EditFn
from ivx.model import moe, patterns

if TYPE_CHECKING:
    import torch

    from ivx.model.components import Site


@dataclass(frozen=True, eq=False)
class Patch:
    """Apply `fn` to component `site` at (rows[i], positions[i]) for every i, with `source[i]`."""

    site: Site
    rows: torch.Tensor  # [m] long
    positions: torch.Tensor  # [m] long, absolute positions in the sequence
    fn: EditFn
    source: torch.Tensor | None = None  # [m, dim] (full component width) or None
    heads: tuple[int, ...] | None = None
    subspace: tuple[int, ...] | None = None
    offset: int = 0  # positions are shifted by -offset (decoding with a KV cache)


def _split(site: Site, raw: torch.Tensor) -> torch.Tensor:
    """[b, s, groups, hi-lo] view of the component inside the raw hook tensor."""
    return raw.view(*raw.shape[:-1], site.groups, site.width)[..., site.lo : site.hi]


def _as_3d(raw: torch.Tensor, shape: dict[str, int]) -> torch.Tensor:
    """Some blocks (OPT's MLP) work on flattened [b*s, d] tensors: view them as [b, s, d]."""
    if raw.dim() == 2 and "seq" in shape:
        return raw.view(-1, shape["seq"], raw.shape[-1])
    return raw


def apply(
    site: Site, raw: torch.Tensor, patches: Sequence[Patch], shape: dict[str, int] | None = None
) -> torch.Tensor:
    """Return a copy of `raw` with every patch of this site written into it."""
    if raw.dim() == 2 and shape:
        return apply(site, _as_3d(raw, shape), patches).view(raw.shape)
    out = raw.clone()
    region = _split(site, out)  # [b, s, groups, w] view into `out`
    seq = raw.shape[1]
    for patch in patches:
        positions = patch.positions - patch.offset
        keep = (positions >= 0) & (positions < seq)
        if not bool(keep.all()):
            if not bool(keep.any()):
                continue
            positions = positions[keep]
            rows = patch.rows[keep]
            source = patch.source[keep] if patch.source is not None else None
        else:
            rows, source = patch.rows, patch.source
        rows, positions, source = placed(raw.device, rows, positions, source)
        current = region[rows, positions].reshape(len(rows), site.dim)  # [m, dim]
        new = _edit(site, patch, current, source)
        region[rows, positions] = new.reshape(len(rows), site.groups, site.hi - site.lo).to(out.dtype)
    return out


def placed(device: torch.device, *tensors: torch.Tensor | None) -> tuple[Any, ...]:
    """The tensors on `device`, where the hooked module runs (no copy if already there): with a
    model sharded over devices (`model.device_map`), a block's activations live on its own device."""
    return tuple(t.to(device) if t is not None else None for t in tensors)


def _edit(site: Site, patch: Patch, current: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
    """Run the patch function on the selected heads / subspace of `current` [m, dim]."""
    if patch.heads is None and patch.subspace is None:
        return patch.fn(current, source)
    m = current.shape[0]
    if patch.heads is not None:
        heads = list(patch.heads)
        cur = current.view(m, site.n_heads, site.head_dim)[:, heads]  # [m, h, hd]
        src = source.view(m, site.n_heads, site.head_dim)[:, heads] if source is not None else None
    else:
        cur = current.unsqueeze(1)  # [m, 1, dim]
        src = source.unsqueeze(1) if source is not None else None
    if patch.subspace is not None:
        dims = list(patch.subspace)
        sub_cur = cur[..., dims]
        sub_src = src[..., dims] if src is not None else None
        new_part = cur.clone()
        new_part[..., dims] = patch.fn(sub_cur, sub_src).to(cur.dtype)
    else:
        new_part = patch.fn(cur, src)
    if patch.heads is None:
        return new_part.squeeze(1)
    new = current.clone().view(m, site.n_heads, site.head_dim)
    new[:, list(patch.heads)] = new_part.to(new.dtype)
    return new.view(m, site.dim)


def _module(model: Any, path: str) -> Any:
    return moe.module(model, path)  # a router's logits: the stand-in its linear output passes through


def _hidden_from_inputs(args: tuple, kwargs: dict) -> tuple[Any, str | int]:
    if args:
        return args[0], 0
    for key in ("hidden_states", "x", "input", "inputs"):
        if key in kwargs:
            return kwargs[key], key
    raise RuntimeError("ivx: could not find the hidden-state input of a hooked module")


@contextmanager
def patching(model: Any, patches: Sequence[Patch]) -> Iterator[None]:
    """Register one hook per module touched by `patches`; always remove them on exit."""
    by_site: dict[Site, list[Patch]] = defaultdict(list)
    for patch in patches:
        by_site[patch.site].append(patch)
    by_module: dict[tuple[str, str], list[tuple[Site, list[Patch]]]] = defaultdict(list)
    for group in by_site.values():
        site = group[0].site
        by_module[(site.module, site.hook)].append((site, group))
    shape: dict[str, int] = {}
    handles = _shape_hooks(model, shape, [module for module, _ in by_module])
    writers = {path: [_pattern_writer(g)] for (path, hook), g in by_module.items() if hook == "pattern"}
    try:
        for (module_path, hook), groups in by_module.items():
            module = _module(model, module_path)
            if hook == "output":
                handles.append(module.register_forward_hook(_output_hook(groups, shape)))
            elif hook == "input":
                handles.append(module.register_forward_pre_hook(_input_hook(groups, shape), with_kwargs=True))
        with patterns.intercepting(model, writers), moe.exposing(model, [m for m, _ in by_module]):
            yield
    finally:
        for handle in handles:
            handle.remove()


def pattern_site(site: Site, probs: torch.Tensor) -> tuple[Site, torch.Tensor]:
    """A pattern site at this forward's key length, and the probabilities as its raw tensor.

    [b, heads, q, k] probabilities are read as [b, q, heads × k]: a query position's component
    holds every head's row of the pattern (per head, one probability per key)."""
    keys = probs.shape[-1]
    raw = probs.transpose(1, 2).reshape(probs.shape[0], probs.shape[2], -1)  # [b, q, heads * k]
    return replace(site, width=keys, hi=keys), raw


def _pattern_writer(groups: list[tuple[Site, list[Patch]]]) -> patterns.PatternFn:
    """Write the patches of pattern sites into an attention module's probabilities."""

    def fn(probs: torch.Tensor) -> torch.Tensor:
        out = probs
        for site, group in groups:
            concrete, raw = pattern_site(site, out)
            new = apply(concrete, raw, group)  # [b, q, heads * k]
            out = new.view(out.shape[0], out.shape[2], out.shape[1], -1).transpose(1, 2)
        return out

    return fn


def _shape_hooks(model: Any, shape: dict[str, int], paths: Sequence[str] = ()) -> list[Any]:
    """Record input shapes at the model, at its backbone (which ivx may call on its own) and at the
    decoder block holding each hooked module (the exact shortcuts call blocks directly, after
    other forwards — the deferred head's one-token call — have run)."""
    backbone = getattr(model, "base_model", model)
    tops = [model] if backbone is model else [model, backbone]
    handles = [m.register_forward_pre_hook(_shape_hook(shape), with_kwargs=True) for m in tops]
    for block in dict.fromkeys(b for b in map(_block_of, paths) if b is not None):
        hook = _block_shape_hook(shape)
        handles.append(_module(model, block).register_forward_pre_hook(hook, with_kwargs=True))
    return handles


def _block_of(path: str) -> str | None:
    """The block holding a module below it (`model.layers.3.mlp` → `model.layers.3`), else None."""
    parts = path.split(".")
    index = max((i for i, part in enumerate(parts[:-1]) if part.isdigit()), default=None)
    return None if index is None else ".".join(parts[: index + 1])


def _block_shape_hook(shape: dict[str, int]) -> Any:
    """Record the (batch, seq) of the hidden states entering a block."""

    def hook(module: Any, args: tuple, kwargs: dict) -> None:
        hidden: Any = args[0] if args else kwargs.get("hidden_states")
        if getattr(hidden, "dim", None) is not None and hidden.dim() == 3:
            shape["batch"], shape["seq"] = int(hidden.shape[0]), int(hidden.shape[1])

    return hook


def _shape_hook(shape: dict[str, int]) -> Any:
    """Record the (batch, seq) of the current forward call, for blocks that flatten tokens."""

    def hook(module: Any, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        if ids is not None:
            shape["batch"], shape["seq"] = int(ids.shape[0]), int(ids.shape[1])

    return hook


def _output_hook(groups: list[tuple[Site, list[Patch]]], shape: dict[str, int]) -> Any:
    def hook(module: Any, args: Any, output: Any) -> Any:
        raw = output[0] if isinstance(output, tuple | list) else output
        for site, patches in groups:
            raw = apply(site, raw, patches, shape)
        if isinstance(output, list):  # OpenAI GPT's blocks return lists
            return [raw, *output[1:]]
        if isinstance(output, tuple):
            return (raw, *output[1:])
        return raw

    return hook


def _input_hook(groups: list[tuple[Site, list[Patch]]], shape: dict[str, int]) -> Any:
    def hook(module: Any, args: tuple, kwargs: dict) -> Any:
        raw, where = _hidden_from_inputs(args, kwargs)
        for site, patches in groups:
            raw = apply(site, raw, patches, shape)
        if where == 0:
            return (raw, *args[1:]), kwargs
        return args, {**kwargs, where: raw}

    return hook


@contextmanager
def capturing(model: Any, sites: Sequence[Site]) -> Iterator[dict[Site, torch.Tensor]]:
    """Record each site's component `[b, s, dim]` during the forward passes inside the block.

    Read hooks return None, so capture never changes the outputs. Repeated forwards
    overwrite the record (one forward per `with` block is the intended use).
    """
    store: dict[Site, torch.Tensor] = {}
    by_module: dict[tuple[str, str], list[Site]] = defaultdict(list)
    for site in sites:
        by_module[(site.module, site.hook)].append(site)
    shape: dict[str, int] = {}
    handles = _shape_hooks(model, shape, [module for module, _ in by_module])

    def record(group: list[Site], raw: torch.Tensor) -> None:
        raw = _as_3d(raw, shape)
        for site in group:
            part = _split(site, raw)
            store[site] = part.reshape(*raw.shape[:-1], site.dim).detach().clone()

    def read_pattern(group: list[Site]) -> patterns.PatternFn:
        def fn(probs: torch.Tensor) -> None:
            for site in group:
                store[site] = pattern_site(site, probs)[1].detach().clone()  # [b, q, heads * k]

        return fn

    readers = {path: [read_pattern(g)] for (path, hook), g in by_module.items() if hook == "pattern"}
    stack = ExitStack()
    try:
        stack.enter_context(patterns.intercepting(model, readers))
        stack.enter_context(moe.exposing(model, [module for module, _ in by_module]))
        for (module_path, hook), group in by_module.items():
            module = _module(model, module_path)
            if hook == "pattern":
                continue
            if hook == "output":

                def out_hook(mod: Any, args: Any, output: Any, group: list[Site] = group) -> None:
                    record(group, output[0] if isinstance(output, tuple | list) else output)

                handles.append(module.register_forward_hook(out_hook))
            else:

                def in_hook(mod: Any, args: tuple, kwargs: dict, group: list[Site] = group) -> None:
                    record(group, _hidden_from_inputs(args, kwargs)[0])

                handles.append(module.register_forward_pre_hook(in_hook, with_kwargs=True))
        yield store
    finally:
        for handle in handles:
            handle.remove()
        stack.close()


def _alias(raw: torch.Tensor) -> torch.Tensor:
    """A new autograd node for `raw`: gradients w.r.t. it flow only through its consumers."""
    return raw.view_as(raw) if raw.requires_grad else raw.detach().requires_grad_()


@contextmanager
def tracking(model: Any, sites: Sequence[Site]) -> Iterator[dict[tuple[str, str], torch.Tensor]]:
    """Like `capturing`, but keep the autograd graph: store the tensor each hooked module consumes.

    Each hook swaps its tensor for an alias that only that module (input hooks) or every consumer
    of the output (output hooks) reads, so `torch.autograd.grad(metric, store[key])` is the
    gradient of patching that site, as an exact patch would. Values are raw `[b, s, width]`
    (or flattened `[b*s, width]`) tensors keyed by (module, hook side).
    """
    store: dict[tuple[str, str], torch.Tensor] = {}
    handles = []
    try:
        for module_path, hook in dict.fromkeys((site.module, site.hook) for site in sites):
            module = _module(model, module_path)
            key = (module_path, hook)
            if hook == "output":

                def out_hook(mod: Any, args: Any, output: Any, key: tuple[str, str] = key) -> Any:
                    raw = _alias(output[0] if isinstance(output, tuple) else output)
                    store[key] = raw
                    return (raw, *output[1:]) if isinstance(output, tuple) else raw

                handles.append(module.register_forward_hook(out_hook))
            else:

                def in_hook(mod: Any, args: tuple, kwargs: dict, key: tuple[str, str] = key) -> Any:
                    raw, where = _hidden_from_inputs(args, kwargs)
                    raw = store[key] = _alias(raw)
                    return ((raw, *args[1:]), kwargs) if where == 0 else (args, {**kwargs, where: raw})

                handles.append(module.register_forward_pre_hook(in_hook, with_kwargs=True))
        with moe.exposing(model, [site.module for site in sites]):
            yield store
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def branch_gates(blocks: Sequence[Any], state: dict[str, int]) -> Iterator[None]:
    """Write each block's output as input + branch, the branch's gradient dropped while
    `state["drop"]` is the block's index (AtP*'s GradDrop); forward values are unchanged."""
    inputs: dict[int, Any] = {}
    handles = []

    def pre(layer: int) -> Any:
        def hook(mod: Any, args: tuple, kwargs: dict) -> None:
            inputs[layer] = _hidden_from_inputs(args, kwargs)[0]

        return hook

    def post(layer: int) -> Any:
        def hook(mod: Any, args: Any, output: Any) -> Any:
            raw = output[0] if isinstance(output, tuple) else output
            branch = raw - inputs[layer]
            branch.register_hook(lambda g: g * 0 if state.get("drop") == layer else g)
            new = inputs[layer] + branch
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return hook

    try:
        for layer, block in enumerate(blocks):
            handles.append(block.register_forward_pre_hook(pre(layer), with_kwargs=True))
            handles.append(block.register_forward_hook(post(layer)))
        yield
    finally:
        for handle in handles:
            handle.remove()
