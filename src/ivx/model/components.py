"""Resolve pyvene component names to (module, hook, slice) sites for any decoder-only HF model.

Resolution is data: one row per module layout in `layouts.LAYOUTS`, plus a structural fallback that
finds the block list and its attention/MLP children, so an unknown architecture still gets
block-level components. A `Site` says which module to hook, whether to read its input or its
output, and which slice of that tensor is the component:

    component = raw.view(*lead, groups, width)[..., lo:hi].reshape(*lead, groups * (hi - lo))

which covers plain tensors (groups=1, the whole width), fused [q|k|v] projections (GPT-2,
Phi-3) and per-head interleaved projections (GPT-NeoX).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from ivx.config.fields import COMPONENT_NAMES
from ivx.core.errors import UserError
from ivx.model import discovery, mixers, module_paths, moe, patterns
from ivx.model.layouts import LAYOUTS, Layout

if TYPE_CHECKING:
    import torch

COMPONENTS: tuple[str, ...] = COMPONENT_NAMES
HEAD_COMPONENTS: frozenset[str] = frozenset(c for c in COMPONENTS if c.startswith("head_"))


class ComponentError(UserError, ValueError):
    """An unknown component, one this architecture lacks, or a layer out of range."""


@dataclass(frozen=True)
class ModelInfo:
    """What ivx needs to know about a model's shape and layout."""

    model_type: str
    layout: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_mlp: int | None
    vocab_size: int
    components: tuple[str, ...]
    layers: tuple[tuple[str, ...], ...] = ()  # per layer, where blocks differ (hybrids; `mixers`)


@dataclass(frozen=True)
class Site:
    """Where a component lives: module, hook side, and the slice of the hooked tensor."""

    component: str
    layer: int
    module: str
    hook: Literal["input", "output", "pattern"]  # pattern: the attention's probabilities (`patterns`)
    groups: int
    width: int
    lo: int
    hi: int
    n_heads: int

    @property
    def dim(self) -> int:
        """Width of the component vector."""
        return self.groups * (self.hi - self.lo)

    @property
    def head_dim(self) -> int:
        """Width of one head (dim for non-head components)."""
        return self.dim // self.n_heads


def _cfg(config: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        try:
            value = getattr(config, name, None)
        except Exception:  # noqa: BLE001 - a per-layer attribute of a heterogeneous config (Dots3): no one value
            value = None
        if value is not None:
            return value
    return default


_has = discovery.has


def layout(model: Any) -> tuple[str, Layout | None, str]:
    """(layout name, table row or None for fallback, blocks path)."""
    config = model.config
    model_type = getattr(config, "model_type", "unknown")
    row = LAYOUTS.get(model_type)
    if row is not None and _has(model, f"{row.blocks}.0.{row.attn}"):
        if model_type == "gpt_neox" and getattr(config, "use_parallel_residual", True):
            row = replace(row, mid=None)
        return model_type, row, row.blocks
    refused = discovery.refusal(config)
    if refused:
        raise ComponentError(refused)
    found = discovery.blocks(model)
    if found is not None:
        return "fallback", None, found
    raise ComponentError(f"could not find the list of decoder blocks in {type(model).__name__}")


def describe(model: Any) -> ModelInfo:
    """Shape and layout of a loaded causal LM."""
    config = getattr(model.config, "text_config", None) or model.config
    name, row, blocks = layout(model)
    n_layers = len(model.get_submodule(blocks))
    d_model = _cfg(config, "hidden_size", "n_embd", "d_model")
    n_heads = _cfg(config, "num_attention_heads", "n_head", default=0)  # 0: attention-free (Mamba)
    n_kv = _cfg(config, "num_key_value_heads", default=n_heads)
    head_dim = _cfg(config, "head_dim", default=d_model // n_heads if n_heads else 0)
    d_mlp = _cfg(config, "intermediate_size", "n_inner", "ffn_dim")
    d_mlp = max(d_mlp) if isinstance(d_mlp, list) else d_mlp  # per layer (Gemma 3n): the widest
    if d_mlp is None and name in ("gpt2", "gptj"):
        d_mlp = 4 * d_model
    stack = blocks_of(model, blocks)
    hybrid = mixers.structure(stack) if row is None else None
    per_layer: tuple[tuple[str, ...], ...] = ()
    if hybrid is not None:
        components, per_layer = mixers.describe_layers(hybrid, COMPONENTS)
        name = "mixers"
    elif row is None:
        comps = ["embedding", "block_input", "block_output"][: 3 if discovery.streams(config) == 1 else 1]
        if discovery.attention(model, f"{blocks}.0"):
            comps += ["attention_input", "attention_output"]
        if discovery.feed_forward(model, f"{blocks}.0"):
            comps += ["mlp_input", "mlp_output"]
        components = tuple(c for c in COMPONENTS if c in comps)
    else:
        interface = getattr(model, "attention_interface", None)  # a skeleton's record says
        if interface is None:
            interface = patterns.supported(model.get_submodule(f"{blocks}.0.{row.attn}"))
        components = tuple(
            c
            for c in COMPONENTS
            if (c != "residual_mid" or row.mid is not None)
            and c not in mixers.COMPONENTS
            and c not in moe.COMPONENTS
            and (c != "head_attention_pattern" or interface)
            and (c != "mlp_activation" or _has(model, f"{blocks}.0.{row.mlp_down}"))  # not in an MoE
        )
    found = [moe.find(block, _ffn(model, blocks, row, hybrid, i), d_model) for i, block in enumerate(stack)]
    components, per_layer = moe.extend(components, per_layer, found, COMPONENTS)
    if row is None:  # what the module tree alone does not say (no table row has either case)
        components, per_layer = discovery.restrict(config, components, per_layer, n_layers)
    return ModelInfo(
        model_type=getattr(config, "model_type", "unknown"),
        layout=name,
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        d_mlp=d_mlp,
        vocab_size=_cfg(config, "vocab_size"),
        components=components,
        layers=per_layer if len(set(per_layer)) > 1 else (),
    )


def _qkv(info: ModelInfo, kind: str, part: str) -> tuple[int, int, int, int, int]:
    """(groups, width, lo, hi, heads) of q/k/v inside a fused projection output."""
    hd, nh, nkv = info.head_dim, info.n_heads, info.n_kv_heads
    heads = nh if part == "q" else nkv
    if kind == "neox":
        index = "qkv".index(part)
        return nh, 3 * hd, index * hd, (index + 1) * hd, nh
    sizes = {"q": nh * hd, "k": nkv * hd, "v": nkv * hd}
    if kind == "gpt2":
        sizes = {"q": info.d_model, "k": info.d_model, "v": info.d_model}
    width = sum(sizes.values())
    lo = {"q": 0, "k": sizes["q"], "v": sizes["q"] + sizes["k"]}[part]
    return 1, width, lo, lo + sizes[part], heads


def _check(info: ModelInfo, component: str, layer: int) -> None:
    """ComponentError unless `component` exists in this model and `layer` is in range."""
    if component not in COMPONENTS:
        near = difflib.get_close_matches(component, COMPONENTS, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise ComponentError(f"unknown component {component!r}; {hint}valid: {', '.join(COMPONENTS)}")
    if component not in info.components:
        raise ComponentError(
            f"component {component!r} does not exist in {info.model_type} (layout {info.layout}); "
            f"available: {', '.join(info.components)}"
        )
    if component != "embedding" and not 0 <= layer < info.n_layers:
        raise ComponentError(
            f"layer {layer} is out of range: the model has {info.n_layers} layers (0..{info.n_layers - 1})"
        )
    if component != "embedding" and info.layers and component not in info.layers[layer]:
        raise ComponentError(mixers.missing(component, layer, info.layers, info.model_type))


def resolve(model: Any, info: ModelInfo, component: str, layer: int) -> Site:
    """The Site of `component` at `layer`; ComponentError with the valid choices otherwise."""
    if module_paths.is_path(component):
        return _path_site(model, info, component, layer)
    _check(info, component, layer)
    d = info.d_model
    if component == "embedding":
        path = next(n for n, m in model.named_modules() if m is model.get_input_embeddings())
        e = _cfg(model.config, "embedding_size", "input_embedding_size", default=d)  # ELECTRA, RemBERT
        return Site(component, 0, path, "output", 1, e, 0, e, 1)
    _, row, blocks = layout(model)
    block = f"{blocks}.{layer}"
    if component in ("block_input", "block_output"):
        hook: Literal["input", "output"] = "input" if component == "block_input" else "output"
        return Site(component, layer, block, hook, 1, d, 0, d, 1)
    hybrid = mixers.structure(blocks_of(model, blocks)) if row is None else None
    if component in moe.COMPONENTS:
        found = moe.find(model.get_submodule(block), _ffn(model, blocks, row, hybrid, layer), d)
        assert found is not None  # describe lists them only where `moe.find` finds them
        path, width = moe.site(found, component, d)
        return Site(component, layer, f"{block}.{path}", "output", 1, width, 0, width, 1)
    if hybrid is not None:
        path, side, width, heads = mixers.site(
            hybrid[layer], component, info.n_heads, info.n_kv_heads, info.head_dim, d
        )
        return Site(component, layer, f"{block}.{path}".rstrip("."), side, 1, width, 0, width, heads)
    if row is None:  # structural fallback: attention / feed-forward modules only (`discovery`)
        pair = discovery.attention(model, block) if component.startswith("attention") else None
        pair = pair or discovery.feed_forward(model, block)
        assert pair is not None  # describe lists only what it found
        hook = "input" if component.endswith("input") else "output"
        path = f"{block}.{pair[0] if hook == 'input' else pair[1]}"
        return Site(component, layer, path, hook, 1, d, 0, d, 1)
    return _row_site(info, row, component, layer, block)


def _ffn(model: Any, blocks: str, row: Layout | None, hybrid: list[Any] | None, layer: int) -> str | None:
    """The feed-forward module of block `layer`, relative to the block (None: not one module)."""
    if row is not None:
        return row.mlp
    if hybrid is not None:
        return hybrid[layer].mlp  # type: ignore[no-any-return]
    pair = discovery.feed_forward(model, f"{blocks}.{layer}")
    return pair[0] if pair is not None and pair[0] == pair[1] else None


def _path_site(model: Any, info: ModelInfo, component: str, layer: int) -> Site:
    """The Site of a module path (`module_paths`): the whole last axis of the module's tensor."""
    blocks = layout(model)[2]
    problem = module_paths.problem(model, blocks, info.n_layers, component, layer)
    if problem:
        raise ComponentError(problem)
    path = module_paths.concrete(component, layer)
    hook = module_paths.parse(component)[1]
    width = module_paths.width(model, path, hook)
    return Site(component, module_paths.block_layer(blocks, path), path, hook, 1, width, 0, width, 1)


def _row_site(info: ModelInfo, row: Layout, component: str, layer: int, block: str) -> Site:
    """The Site of a component inside block `block` of a model whose layout has a table row."""
    d = info.d_model

    def whole(path: str, hook: Literal["input", "output"], width: int = d, heads: int = 1) -> Site:
        return Site(component, layer, path, hook, 1, width, 0, width, heads)

    nh, nkv, hd = info.n_heads, info.n_kv_heads, info.head_dim
    if component == "attention_input":
        return whole(f"{block}.{row.attn}", "input")
    if component == "attention_output":
        return whole(f"{block}.{row.attn}", "output")
    if component in ("attention_value_output", "head_attention_value_output"):
        heads = nh if component.startswith("head_") else 1
        return whole(f"{block}.{row.o_proj}", "input", nh * hd, heads)
    if component == "head_attention_pattern":  # [heads × keys] per query; keys known per forward
        return Site(component, layer, f"{block}.{row.attn}", "pattern", nh, 0, 0, 0, nh)
    if component in ("mlp_input", "mlp_output"):
        path = row.mlp_in if component == "mlp_input" else row.mlp_out
        return whole(f"{block}.{path}", "input" if component == "mlp_input" else "output")
    if component == "mlp_activation":
        return whole(f"{block}.{row.mlp_down}", "input", int(info.d_mlp or 4 * d))
    if component == "residual_mid":
        assert row.mid is not None
        return whole(f"{block}.{row.mid}", "input")
    part = component.removeprefix("head_")[0]  # q / k / v
    head_unit = component.startswith("head_")
    if row.qkv is not None:
        assert row.fused is not None
        groups, width, lo, hi, heads = _qkv(info, row.qkv, part)
        fused = f"{block}.{row.fused}"
        return Site(component, layer, fused, "output", groups, width, lo, hi, heads if head_unit else 1)
    projection = {"q": row.q, "k": row.k, "v": row.v}[part]
    heads = nh if part == "q" else nkv
    return whole(f"{block}.{projection}", "output", heads * hd, heads if head_unit else 1)


def blocks(model: Any) -> list[Any]:
    """The decoder blocks, in order."""
    return list(model.get_submodule(layout(model)[2]))


def blocks_of(model: Any, path: str) -> list[Any]:
    """The blocks of the ModuleList at `path`."""
    return list(model.get_submodule(path))


def read(site: Site, raw: torch.Tensor) -> torch.Tensor:
    """The component `[..., dim]` inside a raw hook tensor."""
    part = raw.reshape(*raw.shape[:-1], site.groups, site.width)[..., site.lo : site.hi]
    return part.reshape(*raw.shape[:-1], site.dim)


def write(site: Site, raw: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """A copy of `raw` with the component replaced by `new` `[..., dim]`."""
    out = raw.clone()
    view = out.view(*raw.shape[:-1], site.groups, site.width)
    view[..., site.lo : site.hi] = new.reshape(*raw.shape[:-1], site.groups, site.hi - site.lo).to(out.dtype)
    return out


def table(model: Any, info: ModelInfo) -> list[dict[str, Any]]:
    """One row per available component: module at layer N, hook side, shape (for `ivx components`)."""
    rows = []
    for component in info.components:
        where = [i for i, names in enumerate(info.layers) if component in names] or [0]
        site = resolve(model, info, component, where[0])
        module = site.module if component == "embedding" else site.module.replace(f".{where[0]}", ".N", 1)
        if info.layers and component != "embedding" and len(where) < info.n_layers:
            module += f" (layer{'s' if len(where) > 1 else ''} {', '.join(map(str, where))} only)"
        shape = (
            f"[b, s, {site.n_heads} heads × {site.head_dim}]" if site.n_heads > 1 else f"[b, s, {site.dim}]"
        )
        if site.hook == "pattern":
            shape = f"[b, s, {site.n_heads} heads × s keys]"
        rows.append({"name": component, "module": module, "hook": site.hook, "shape": shape})
    return rows
