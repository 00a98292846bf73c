"""SAE feature edits as hook functions: encode, edit the chosen features, write back exactly.

At a site with an SAE, an edit reads the activation x [m, d_in] of its (row, position) pairs,
encodes f = encode(x), edits the chosen features to f', and writes

    keep (default):  x + delta(f' − f)   (= decode(f') + (x − decode(f)): the error term is kept)
    drop:            decode(f')          (the activation is replaced by the reconstruction)

so an edit that changes no feature leaves x bit-for-bit unchanged, and every edit changes x by
exactly (f' − f) @ W_dec (scaled back through the SAE's input normalisation). Each pair is edited
on its own (position-local), so the exact shortcuts that rely on locality still apply. The
function has the `(current, source) -> new` shape of every other kind (`core.interventions`), so
`hooks.Patch` batches feature edits like site edits: one hook per module.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ivx.core import interventions
from ivx.model import sae as saes

if TYPE_CHECKING:
    import torch

    from ivx.core.interventions import EditFn
    from ivx.model.loading import LoadedModel
    from ivx.plan.edits import Edit


@lru_cache(maxsize=16)
def _load(ref: str, base_dir: str, device: str) -> saes.SAE:
    return saes.load(ref, base_dir=Path(base_dir)).to(device=device)


def load(ref: str, base_dir: Path, device: Any) -> saes.SAE:
    """The SAE of a reference on `device`, loaded once per process."""
    return _load(ref, str(base_dir), str(device))


def _mask(edit: Edit, f: torch.Tensor) -> torch.Tensor | None:
    """[m, d_sae] True where the edit acts (None: every feature)."""
    import torch

    if edit.top is not None:
        idx = f.topk(edit.top, dim=-1).indices  # [m, top]
        return torch.zeros_like(f, dtype=torch.bool).scatter(-1, idx, True)
    if edit.features is None:
        return None
    mask = torch.zeros(f.shape[-1], dtype=torch.bool, device=f.device)
    mask[list(edit.features)] = True
    return mask.expand_as(f)


def targets(edit: Edit, f: torch.Tensor, f_src: torch.Tensor | None) -> torch.Tensor:
    """The feature values an edit writes, every column (`_mask` picks where they apply): f [..., d_sae]
    the features edited, f_src the source run's (vanilla; broadcast to f's shape)."""
    kind = edit.kind
    if kind == "vanilla":
        assert f_src is not None
        return f_src.expand_as(f)
    if kind == "zero":
        return f.new_zeros(f.shape)
    if kind == "set":
        return f.new_full(f.shape, float(edit.value if edit.value is not None else 0.0))
    if kind == "scale":
        return f * float(edit.value if edit.value is not None else 1.0)
    if kind == "addition":
        return f + float(edit.coefficient)
    raise ValueError(f"kind {kind!r} does not act on SAE features")


def _write(
    sae: saes.SAE, error: str, current: torch.Tensor, f: torch.Tensor, new_f: torch.Tensor
) -> torch.Tensor:
    """The new activation for features f → new_f: exact delta (error kept) or the reconstruction."""
    if error == "drop":
        return sae.decode(new_f, like=current).to(current.dtype)
    return current + sae.delta(new_f - f, like=current).to(current.dtype)


def edit_fn(sae: saes.SAE, edit: Edit) -> EditFn:
    """The hook function of an SAE edit: `(current [m, d_in], source [m, d_in] | None) -> new`."""
    import torch

    def fn(current: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
        f = sae.encode(current)  # [m, d_sae]
        mask = _mask(edit, f)
        target = targets(
            edit, f, sae.encode(source) if edit.kind == "vanilla" and source is not None else None
        )
        return _write(
            sae, edit.sae_error, current, f, target if mask is None else torch.where(mask, target, f)
        )

    return fn


def packable(edit: Edit) -> bool:
    """Whether a batch's patch carries this edit's features per pair (`packed_fn`): explicit
    features, not a recorder. Then cells that differ only in their features share one patch."""
    return edit.sae is not None and edit.features is not None and edit.kind != "collect"


def group(edit: Edit) -> Any:
    """The SAE part of a patch's group key (None without an SAE); packed edits omit the features."""
    if edit.sae is None:
        return None
    features = ("packed", len(edit.features)) if packable(edit) and edit.features else edit.features
    return (edit.sae, features, edit.top, edit.sae_error)


def packed_source(edit: Edit, block: torch.Tensor | None, pairs: int) -> torch.Tensor | None:
    """A packed edit's per-pair source: [pairs, (d_in if vanilla) + n_features], the feature indices
    as the last columns (float64, exact for any index and any activation dtype)."""
    import torch

    if not packable(edit):
        return block
    assert edit.features is not None
    idx = torch.tensor(edit.features, dtype=torch.float64).expand(pairs, -1)  # [pairs, k]
    return idx if block is None else torch.cat([block.to(torch.float64), idx], 1)


def packed_fn(sae: saes.SAE, edit: Edit) -> EditFn:
    """`edit_fn` whose features arrive per pair in the source's last columns (`packed_source`)."""
    import torch

    assert edit.features is not None
    k = len(edit.features)

    def fn(current: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
        assert source is not None
        idx = source[:, -k:].long()  # [m, k]
        acts = source[:, :-k].to(current.dtype) if source.shape[1] > k else None  # [m, d_in]
        f = sae.encode(current)  # [m, d_sae]
        mask = torch.zeros_like(f, dtype=torch.bool).scatter(-1, idx, True)
        target = targets(edit, f, sae.encode(acts) if edit.kind == "vanilla" and acts is not None else None)
        return _write(sae, edit.sae_error, current, f, torch.where(mask, target, f))

    return fn


def reader(sae: saes.SAE, edit: Edit) -> Callable[[torch.Tensor], torch.Tensor]:
    """What a `collect` edit records: the features [m, n] (the chosen ones, or all) of [m, d_in]."""

    def read(current: torch.Tensor) -> torch.Tensor:
        f = sae.encode(current)  # [m, d_sae]
        if edit.features is not None:
            return f[..., list(edit.features)]
        mask = _mask(edit, f)
        return f if mask is None else f * mask  # `top`: all columns, zero outside each position's top k
        return f

    return read


def loader(lm: LoadedModel, base_dir: Path, packed: bool = False) -> Callable[[Edit], EditFn]:
    """Edit functions of SAE edits, each SAE loaded once (for `patches.fixed_or_trained`); with
    `packed`, edits with explicit features read them from their sources (`packed_source`)."""

    def fn_of(edit: Edit) -> EditFn:
        assert edit.sae is not None
        sae = load(edit.sae, base_dir, lm.device)
        if edit.kind == "collect":  # the recorder reads the features (`reader`); x is unchanged
            return interventions.collect
        return packed_fn(sae, edit) if packed and packable(edit) else edit_fn(sae, edit)

    return fn_of
