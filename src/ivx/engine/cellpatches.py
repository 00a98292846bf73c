"""The hook patches of a batch of cells: every edit, and the noise corruption, as vectorised `Patch`es.

Each cell owns `samples` consecutive batch rows. All edits of one (site, intervention) across the
batch become one `hooks.Patch` with index tensors, so a forward with hundreds of cells runs one
hook per touched module and no Python loop per row. Source values come from the baselines
(clean, source or corrupted activations), a steering vector, a seeded noise draw or a trained
bundle's parameters (loaded once).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ivx.core import interventions
from ivx.engine import patches
from ivx.engine import sae as sae_edits
from ivx.engine.ablation import Ablations
from ivx.engine.baselines import Baselines
from ivx.engine.workload import Workload
from ivx.model import hooks
from ivx.plan.edits import Edit
from ivx.plan.grid import Cell

if TYPE_CHECKING:
    import torch

    from ivx.model.components import Site

# (site, kind, value, coefficient, heads, subspace, intervention name, SAE features): one Patch per key
GroupKey = tuple[
    Any, str, "float | None", float, "tuple[int, ...] | None", "tuple[int, ...] | None", str, Any
]
CORRUPTION = "__corrupt__"


@dataclass(frozen=True)
class Collect:
    """A `collect` edit of one cell: which recorder holds its `positions` rows."""

    key: GroupKey
    cell: int
    name: str
    layer: int
    positions: int


@dataclass
class PatchSet:
    """The patches of one batch, and what its `collect` edits record while it runs."""

    patches: list[hooks.Patch]
    collects: list[Collect]
    recorders: dict[GroupKey, list[torch.Tensor]] = field(default_factory=dict)

    def collected(self, samples: int) -> dict[int, dict[str, torch.Tensor]]:
        """Per cell index: its recorded activations, averaged over samples ([positions, dim])."""
        import torch

        out: dict[int, dict[str, torch.Tensor]] = defaultdict(dict)
        offsets: dict[GroupKey, int] = defaultdict(int)
        for c in self.collects:
            stacked = torch.cat(self.recorders[c.key])
            at = offsets[c.key]
            part = stacked[at : at + c.positions * samples].view(samples, c.positions, -1).mean(0)
            offsets[c.key] = at + c.positions * samples
            out[c.cell][f"{c.name}.cell{c.cell}.layer{c.layer}"] = part.cpu()
        return out


class PatchBuilder:
    """Builds the patches of batches of cells from one workload's baselines."""

    def __init__(self, work: Workload, base: Baselines) -> None:
        self.work = work
        self.base = base
        base_dir = work.cfg.path.parent
        self.fn_of = patches.fixed_or_trained(
            patches.trained_loader(work.lm, base_dir), sae_edits.loader(work.lm, base_dir, packed=True)
        )
        self.ablations = Ablations()  # mean / resample values, filled before any cell (`ablation.prepare`)

    def build(self, cells: list[Cell], offset: int = 0) -> PatchSet:
        """All patches of a batch of cells (each with `samples` rows), grouped per site + function."""
        import torch

        S = self.work.samples
        groups: dict[GroupKey, dict[str, list]] = defaultdict(lambda: {"rows": [], "pos": [], "src": []})
        collects: list[Collect] = []
        edits: dict[GroupKey, Edit] = {}
        embed = self.work.site("embedding", 0) if self.base.noise else None
        for i, cell in enumerate(cells):
            rows = torch.arange(i * S, (i + 1) * S)
            if embed is not None:
                positions = self.work.plan.corrupt_positions[cell.prompt]
                if positions:
                    g = groups[(embed, "noise", None, 1.0, None, None, CORRUPTION, None)]
                    g["rows"].append(rows.repeat_interleave(len(positions)))
                    g["pos"].append(torch.tensor(positions).repeat(S))
                    g["src"].append(self.base.noise[cell.prompt].reshape(-1, embed.dim))
            for edit in cell.edits:
                site = self.work.site(edit.component, edit.layer)
                n = len(edit.positions)
                src = self.source_values(cell, edit, site)
                sae = sae_edits.group(edit)  # feature sweeps: one patch, features per pair
                key = (
                    site,
                    edit.kind,
                    edit.value,
                    edit.coefficient,
                    edit.heads,
                    edit.subspace,
                    edit.name,
                    sae,
                )
                edits[key] = edit
                g = groups[key]
                g["rows"].append(rows.repeat_interleave(n))
                g["pos"].append(torch.tensor(edit.positions).repeat(S))
                block = src if edit.source == "corrupted" else None  # already one block per sample
                if edit.source != "corrupted" and src is not None and src.numel():
                    block = src.repeat(S, 1)
                block = sae_edits.packed_source(edit, block, n * S)
                if block is not None:
                    g["src"].append(block)
                if edit.kind == "collect":
                    collects.append(Collect(key, cell.index, edit.name, edit.layer, n))
        out = PatchSet([], collects)
        for key, g in groups.items():
            out.patches.append(self._patch(key, g, edits.get(key), out, offset))
        return out

    def _patch(
        self, key: GroupKey, g: dict[str, list], edit: Edit | None, out: PatchSet, offset: int
    ) -> hooks.Patch:
        import torch

        site, kind, value, coefficient, heads, subspace, name, _ = key
        fn: Callable
        if edit is None:  # the noise corruption
            fn = interventions.for_kind(kind, value=value, coefficient=coefficient)
        else:
            fn = self.fn_of(edit)
        if kind == "collect":
            view = None
            if edit is not None and edit.sae is not None:  # record the SAE's features, not x
                view = sae_edits.reader(
                    sae_edits.load(edit.sae, self.work.cfg.path.parent, self.work.lm.device), edit
                )
            fn = _recorder(out.recorders.setdefault(key, []), view)
        device = self.work.lm.device
        return hooks.Patch(
            site=site,
            rows=torch.cat(g["rows"]).to(device),
            positions=torch.cat(g["pos"]).to(device),
            fn=fn,
            source=torch.cat(g["src"]).to(device) if g["src"] else None,
            heads=heads,
            subspace=subspace,
            offset=offset,
        )

    def source_values(self, cell: Cell, edit: Edit, site: Site) -> torch.Tensor | None:
        """The values an edit writes from: [n, dim] (or [samples * n, dim] from the corrupted run)."""
        import torch

        work, key = self.work, (edit.component, edit.layer)
        if edit.source == "base":
            return self.base.clean_acts[key][cell.prompt][list(edit.source_positions)]
        if edit.source == "source":
            return self.base.source_acts[key][cell.prompt][list(edit.source_positions)]
        if edit.source == "corrupted":  # [samples, n, dim] → rows in sample-major order
            acts = self.base.corrupt_acts[key][cell.prompt][:, list(edit.source_positions)]
            return acts.reshape(-1, acts.shape[-1])
        if edit.kind in ("mean", "resample"):
            return self.ablations.values(cell, edit, work.length(cell))
        n = len(edit.positions)
        if edit.contrast is not None:  # ActAdd / mean difference: one vector per site, as ivx generate
            return work.contrast(edit.contrast, site).to(work.lm.device).expand(n, site.dim)
        if edit.vector is not None:
            vec = work.vector(edit.vector, edit.name).to(work.lm.device)
            if vec.dim() == 1:
                if vec.shape[0] != site.dim:
                    raise ValueError(
                        f"vector {edit.vector!r} has {vec.shape[0]} dims but {edit.component} has {site.dim}"
                    )
                return vec.expand(n, site.dim)
            return vec[:n]
        if edit.kind == "noise":
            weight = work.lm.model.get_input_embeddings().weight
            std = (edit.value if edit.value is not None else 3.0) * float(weight.float().std())
            return interventions.noise(
                work.exp.seed + 1 + edit.index, cell.prompt, cell.index, n, site.dim, std
            )
        return torch.zeros(0)


def _recorder(store: list[torch.Tensor], view: Callable | None = None) -> Callable:
    """A `collect` edit: record the current value (or `view` of it), write it back unchanged."""

    def fn(current: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
        store.append((current if view is None else view(current)).detach().clone())
        return current

    return fn
