"""Any module inside a decoder block as a component, by its path (pyvene's strings, nnsight's tree).

`component: {module: "model.layers.{layer}.mlp.act_fn", hook: output}` in YAML becomes the
component name `module:model.layers.{layer}.mlp.act_fn@output` (also accepted as written), so it
sweeps, prints and groups like any named component. `{layer}` is replaced by the cell's layer. The
site is the module's input (its first positional or `hidden_states` argument) or output (the first
element of a tuple), read and written like the named components: the last axis is the unit
width, positions index the sequence axis. The path must lie inside a decoder block (the exact
shortcuts reason per block); the tensor must be `[batch, seq, width]` (or tokens flattened to
`[batch × seq, width]`), which one probe forward of a 4-token prompt establishes per path.
"""

from __future__ import annotations

import difflib
import weakref
from typing import Any, Literal

from ivx.config import module_names
from ivx.core.errors import UserError
from ivx.model import moe

PROBE = 4  # tokens of the probe forward
_WIDTHS: weakref.WeakKeyDictionary[Any, dict[tuple[str, str], int]] = weakref.WeakKeyDictionary()
is_path = module_names.is_path


class ModulePathError(UserError, ValueError):
    """A module path that does not exist, lies outside the blocks, or has no [batch, seq, …] tensor."""


def parse(component: str) -> tuple[str, Literal["input", "output"]]:
    """(path template, hook side) of a module-path component name."""
    match = module_names.PATTERN.match(component)
    if match is None:
        raise ModulePathError(
            f"component {component!r} is not a module path: write module:<path>@output or @input"
        )
    return match.group(1), "input" if match.group(2) == "input" else "output"


def concrete(component: str, layer: int) -> str:
    """The module path at `layer` ({layer} substituted)."""
    return parse(component)[0].replace("{layer}", str(layer))


def problem(model: Any, blocks: str, n_layers: int, component: str, layer: int) -> str | None:
    """What is wrong with this path at `layer` on this model's module tree, or None."""
    template, hook = parse(component)
    if "{layer}" in template and not 0 <= layer < n_layers:
        return f"layer {layer} is out of range: the model has {n_layers} layers (0..{n_layers - 1})"
    path = concrete(component, layer)
    names = [n for n, _ in model.named_modules() if n]
    if path not in names:
        near = difflib.get_close_matches(path, names, n=3, cutoff=0.6)
        hint = f"; nearest: {', '.join(near)}" if near else ""
        model_type = getattr(model.config, "model_type", None) or type(model).__name__
        return f"module {path!r} does not exist in this {model_type} model{hint}"
    if hook == "output" and _router(model, path):
        return (
            f"module {path!r} is a mixture-of-experts router: its output is the routing it already "
            "computed from its logits, so an edit there would change nothing; use the router_logits "
            "component (it re-routes; docs/moe.md)"
        )
    if not path.startswith(f"{blocks}."):
        return (
            f"module {path!r} is not inside a decoder block ({blocks}.N.…): module paths reach the "
            "blocks' modules; use the named components (embedding, block_input, …) outside them"
        )
    return None


def _router(model: Any, path: str) -> bool:
    """Whether `path` is the router of a fused mixture of experts (a gate / router beside `experts`)."""
    parent, _, name = path.rpartition(".")
    return name in moe.ROUTERS and hasattr(model.get_submodule(parent), moe.EXPERTS) if parent else False


def block_layer(blocks: str, path: str) -> int:
    """The index of the block `path` lies in."""
    return int(path[len(blocks) + 1 :].split(".", 1)[0])


def width(model: Any, path: str, hook: str) -> int:
    """The last-axis width of the module's tensor, from one probe forward (cached per model)."""
    cache = _WIDTHS.setdefault(model, {})
    if (path, hook) not in cache:
        cache[(path, hook)] = _probe(model, path, hook)
    return cache[(path, hook)]


def _probe(model: Any, path: str, hook: str) -> int:
    """Run a PROBE-token forward (on the model's device, meta included) and measure the tensor."""
    import torch

    seen: dict[str, Any] = {}

    def record(value: Any) -> None:
        value = value[0] if isinstance(value, tuple | list) and value else value
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        seen.setdefault("shape", shape)

    module = model.get_submodule(path)
    if hook == "output":
        handle = module.register_forward_hook(lambda m, a, out: record(out))
    else:
        handle = module.register_forward_pre_hook(
            lambda m, a, kw: record(a[0] if a else kw.get("hidden_states", kw.get("x"))), with_kwargs=True
        )
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model(input_ids=torch.zeros((1, PROBE), dtype=torch.long, device=device), use_cache=False)
    except Exception as error:
        if "shape" not in seen:
            raise ModulePathError(f"module {path!r}: the probe forward failed ({error})") from error
    finally:
        handle.remove()
    return _checked_width(path, hook, seen.get("shape"))


def _checked_width(path: str, hook: str, shape: Any) -> int:
    if shape is None:
        raise ModulePathError(f"module {path!r} never ran in a forward pass: nothing to hook")
    if isinstance(shape, str):
        raise ModulePathError(f"module {path!r}'s {hook} is a {shape}, not a tensor")
    if (len(shape) == 3 and shape[:2] == (1, PROBE)) or (len(shape) == 2 and shape[0] == PROBE):
        return int(shape[-1])
    raise ModulePathError(
        f"module {path!r}'s {hook} has shape {list(shape)} for 1 prompt of {PROBE} tokens: module "
        "paths reach [batch, seq, width] tensors (a sequence axis second, the unit on the last axis)"
    )
