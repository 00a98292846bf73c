"""Hook `Patch`es from planned `Edit`s: one vectorised patch per (site, edit function).

Every command places its edits in a batch differently (`ivx run`: one cell per row group,
`ivx generate`: left-padded prompts and new tokens, `ivx train`: one record per row), but all of
them end here: placed edits are grouped by what they do and where, and each group becomes one
`hooks.Patch` with its rows, columns and per-pair source values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ivx.core import interventions
from ivx.engine import das
from ivx.model.hooks import Patch

if TYPE_CHECKING:
    import torch

    from ivx.core.interventions import EditFn
    from ivx.model.components import Site
    from ivx.model.loading import LoadedModel
    from ivx.plan.edits import Edit


@dataclass(frozen=True, eq=False)
class Placed:
    """One edit placed in a batch: rows[i], column positions[i] get source[i] (or no source)."""

    edit: Edit
    rows: torch.Tensor  # [m] long
    positions: torch.Tensor  # [m] long, absolute columns of the batch
    source: torch.Tensor | None  # [m, dim] or None


def group_key(edit: Edit) -> tuple[object, ...]:
    """Edits with equal keys share one patch: same site, function, heads and subspace."""
    return (
        edit.component,
        edit.layer,
        edit.kind,
        edit.value,
        edit.coefficient,
        edit.heads,
        edit.subspace,
        edit.name,
        (edit.sae, edit.features, edit.top, edit.sae_error),
    )


def build(
    placed: Iterable[Placed],
    site_of: Callable[[str, int], Site],
    fn_of: Callable[[Edit], EditFn],
    offset: int = 0,
    device: torch.device | str | None = None,
) -> list[Patch]:
    """One `Patch` per group of placed edits, rows/columns/sources concatenated in order."""
    import torch

    groups: dict[tuple[object, ...], list[Placed]] = {}
    for item in placed:
        groups.setdefault(group_key(item.edit), []).append(item)
    patches = []
    for items in groups.values():
        edit = items[0].edit
        sources = [p.source for p in items if p.source is not None]
        patches.append(
            Patch(
                site=site_of(edit.component, edit.layer),
                rows=torch.cat([p.rows for p in items]).to(device),
                positions=torch.cat([p.positions for p in items]).to(device),
                fn=fn_of(edit),
                source=torch.cat(sources).to(device) if sources else None,
                heads=edit.heads,
                subspace=edit.subspace,
                offset=offset,
            )
        )
    return patches


def trained_loader(lm: LoadedModel, base_dir: Path) -> Callable[[Edit], EditFn]:
    """Edit functions of trained edits, each bundle's parameters loaded once."""

    cache: dict[str, EditFn] = {}

    def load(edit: Edit) -> EditFn:
        if edit.bundle is None:
            raise ValueError(
                f"intervention {edit.name!r} ({edit.kind}) needs `bundle` with its trained parameters"
            )
        key = f"{edit.kind}:{edit.name}:{edit.bundle}"
        if key not in cache:
            expect = {"d_model": lm.info.d_model, "n_layers": lm.info.n_layers}
            params = das.load_params(edit.name, edit.bundle, base_dir, expect)
            cache[key] = das.edit_fn(edit.kind, {k: v.to(lm.device) for k, v in params.items()})
        return cache[key]

    return load


def fixed_or_trained(
    trained: Callable[[Edit], EditFn], sae: Callable[[Edit], EditFn] | None = None
) -> Callable[[Edit], EditFn]:
    """`fn_of` for `build`: the kind's fixed function, the trained one for DAS kinds, or the SAE
    feature edit (`engine.sae.loader`) for edits with `sae`."""

    def fn_of(edit: Edit) -> EditFn:
        if edit.sae is not None:
            if sae is None:
                raise ValueError(
                    f"intervention {edit.name!r} acts on SAE features but no SAE loader was given"
                )
            return sae(edit)
        if edit.trainable:
            return trained(edit)
        return interventions.for_kind(edit.kind, value=edit.value, coefficient=edit.coefficient)

    return fn_of
