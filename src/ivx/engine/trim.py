"""Final-block trimming: in the last block, only the last position runs the output projection and MLP.

When only the last position's logits are read (the deferred head), the last block's outputs at
the other positions are never used: nothing after the last block mixes positions (the final norm
and the head are per position). Those positions still need their keys and values, which the
attention computes before its output projection, so the attention runs at full length; the
attention's output projection and the MLP — three quarters of a GPT-2 block's weights — run on
the last position only. Each trimmed module's input is cut to the last position by a pre-hook and
its output padded back to full length with zeros (never read) by a hook that runs before any
other, so every ivx patch still sees a full-length tensor with its positions where they were.

Exact for the last position: the trimmed modules are per-position maps. It is a shortcut of its
own (`batch.trim_final`), proven like the others by the pre-run probe, and used only in forwards
whose last block has no patch inside the MLP (`mlp_activation`, a mixture of experts' `router_logits`
and `experts_output`), which would see the cut tensor.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ivx.model import components, mixers, module_paths, moe
from ivx.model.hooks import _hidden_from_inputs

if TYPE_CHECKING:
    import torch

    from ivx.model.hooks import Patch
    from ivx.model.loading import LoadedModel


def regions(model: Any) -> list[tuple[str, str]] | None:
    """(module whose input is cut, module whose output is padded) pairs of the last block, or None
    when none is found. A layout row names them; otherwise they are found in the module tree
    (`mixers.per_position`: output projections and the MLP, never a module shared between blocks)."""

    _, row, blocks = components.layout(model)
    stack = components.blocks_of(model, blocks)
    last = f"{blocks}.{len(stack) - 1}"
    if row is None:
        found = mixers.per_position(stack[-1], mixers.shared(stack))
        return [(f"{last}.{a}", f"{last}.{b}") for a, b in found] or None
    return [
        (f"{last}.{row.o_proj}", f"{last}.{row.o_proj}"),
        (f"{last}.{row.mlp_in}", f"{last}.{row.mlp_out}"),
    ]


def applicable(lm: LoadedModel, patches: Sequence[Patch]) -> bool:
    """Whether a forward with these patches may be trimmed: none hooks inside the last MLP."""
    top = lm.info.n_layers - 1
    # inside the trimmed MLP (a MoE's router and experts see only the last position) and module
    # paths: any module of the last block may be trimmed
    inside = ("mlp_activation", *moe.COMPONENTS)
    return not any(
        p.site.layer == top and (p.site.component in inside or module_paths.is_path(p.site.component))
        for p in patches
    )


def _cut(state: dict[str, bool]) -> Any:

    def pre(module: Any, args: tuple, kwargs: dict) -> Any:
        hidden, key = _hidden_from_inputs(args, kwargs)
        state["cut"] = hidden.dim() == 3 and hidden.shape[1] > 1  # 2-D (flattened) inputs are left alone
        if not state["cut"]:
            return None
        state["length"], state["batch"] = hidden.shape[1], hidden.shape[0]
        short = hidden[:, -1:].contiguous()
        if isinstance(key, int):
            return (short, *args[1:]), kwargs
        return args, {**kwargs, key: short}

    return pre


def _pad(state: dict[str, Any]) -> Any:
    def post(module: Any, args: Any, output: Any) -> Any:
        if not state.get("cut"):
            return None
        state["cut"] = False
        first = output[0] if isinstance(output, tuple) else output
        batch, length = state["batch"], state["length"]
        if first.dim() == 2 and first.shape[0] == batch:  # flattened tokens (MoE blocks): [batch * 1, d]
            full: torch.Tensor = first.new_zeros((batch * length, first.shape[1]))
            full.view(batch, length, -1)[:, -1] = first
        elif first.dim() >= 3 and first.shape[1] == 1:
            full = first.new_zeros((first.shape[0], length, *first.shape[2:]))
            full[:, -1:] = first
        else:  # the module mixed in a full-length input
            raise RuntimeError(f"a trimmed module returned {tuple(first.shape)}, not one position")
        return (full, *output[1:]) if isinstance(output, tuple) else full

    return post


@contextmanager
def trimmed(lm: LoadedModel, enabled: bool = True) -> Iterator[None]:
    """Run the next forwards with the last block trimmed to its last position (see module doc).

    Enter it after `hooks.patching`: the cut runs after the patches' input hooks (they write the
    full-length input first) and the padding before their output hooks.
    """
    pairs = regions(lm.model) if enabled else None
    handles = []
    try:
        for first, last in pairs or []:
            state: dict[str, Any] = {}
            handles.append(
                lm.model.get_submodule(first).register_forward_pre_hook(_cut(state), with_kwargs=True)
            )
            handles.append(lm.model.get_submodule(last).register_forward_hook(_pad(state), prepend=True))
        yield
    finally:
        for handle in handles:
            handle.remove()
