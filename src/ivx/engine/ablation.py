"""The values mean and resample ablations write: reference means and resampled records' activations.

Computed once per run, before any cell (`prepare`), from plain forwards of the reference set
(`plan.ablation`): per (intervention, site) the sum of the captured activations per token length
(`pool: position`) or over every position (`pool: all`), divided by the count; and the full
activations of each record a prompt is resampled from. A cell's edit then reads its positions'
rows (`values`). Everything depends only on the config, never on which cells are left to run,
so a resumed run and each Ray worker write the same bits.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ivx.core.errors import ConfigError
from ivx.engine.workload import Workload
from ivx.model import hooks
from ivx.plan import ablation
from ivx.plan.edits import Edit
from ivx.plan.grid import Cell

if TYPE_CHECKING:
    import torch

Key = tuple[int, str, int]  # (intervention index, component, layer)
POOLED = -1  # the `means` entry of a pooled mean (instead of a token length)


@dataclass
class Ablations:
    """Reference values of one run's mean and resample edits."""

    means: dict[Key, dict[int, torch.Tensor]] = field(
        default_factory=dict
    )  # length → [L, dim]; POOLED → [dim]
    records: dict[Key, dict[int, torch.Tensor]] = field(default_factory=dict)  # record → [L, dim]
    drawn: dict[int, dict[int, int | None]] = field(default_factory=dict)  # intervention → prompt → record

    def values(self, cell: Cell, edit: Edit, length: int) -> torch.Tensor:
        """The values an ablation edit writes at its positions: [n, dim]."""
        return self.sequence(cell.prompt, edit, length)[list(edit.positions)]

    def sequence(self, prompt: int, edit: Edit, length: int) -> torch.Tensor:
        """An ablation edit's values at every position of a prompt of `length` tokens: [length, dim]."""
        key = (edit.index, edit.component, edit.layer)
        if edit.kind == "resample":
            record = self.drawn[edit.index][prompt]
            assert record is not None  # `prepare` refuses prompts with nothing to draw
            return self.records[key][record]
        means = self.means[key]
        if POOLED in means:
            return means[POOLED].expand(length, -1)
        return means[length]

    def report(self, work: Workload) -> dict[str, Any]:
        """What the manifest records: each resample's draw (prompt → record) and each mean's set."""
        out: dict[str, Any] = {}
        for index, drawn in self.drawn.items():
            name = work.exp.interventions[index].name or f"iv{index}"
            out[name] = {"resample": {str(p): r for p, r in drawn.items()}}
        for index in sorted({key[0] for key in self.means}):
            iv = work.exp.interventions[index]
            name = iv.name or f"iv{index}"
            ref = iv.reference.file if iv.reference else "base prompts"
            out.setdefault(name, {})["mean"] = {"reference": ref, "pool": iv.pool}
        return out


def _sites(work: Workload, kind: str) -> dict[int, set[tuple[str, int]]]:
    """Per intervention: the (component, layer) sites its `kind` edits touch in the plan."""
    out: dict[int, set[tuple[str, int]]] = defaultdict(set)
    for cell in work.plan.cells:
        for e in cell.edits:
            if e.kind == kind:
                out[e.index].add((e.component, e.layer))
    return out


def prepare(work: Workload) -> Ablations:
    """The means and resampled records of every mean / resample edit in the plan."""
    out = Ablations()
    prompts = list(work.prompts.values())
    means, resamples = _sites(work, "mean"), _sites(work, "resample")
    for index in sorted(set(means) | set(resamples)):
        refs = ablation.reference_set(work.cfg, work.lm.tokenizer, prompts, index)
        if index in means:
            pooled = work.exp.interventions[index].pool == "all"
            out.means.update(_means(work, refs.ids, index, means[index], pooled))
        if index in resamples:
            drawn = ablation.resample_map(refs, {p.index: p.length for p in prompts}, work.exp.seed)
            lonely = [p for p, r in drawn.items() if r is None]
            if lonely:  # prompts kept by `trace.select_correct` may leave one without a partner
                raise ConfigError(
                    [
                        work.cfg.problem(
                            ("interventions", index, "kind"),
                            f"resample: no other record has the token length of prompt {lonely[0]}",
                        )
                    ]
                )
            out.drawn[index] = drawn
            wanted = {r: refs.ids[r] for r in sorted({r for r in drawn.values() if r is not None})}
            for (component, layer), acts in _capture(work, wanted, resamples[index]).items():
                out.records[(index, component, layer)] = acts
    return out


def _forwards(
    work: Workload, ids_of: dict[int, tuple[int, ...]], wanted: set[tuple[str, int]]
) -> Iterator[tuple[list[int], dict[tuple[str, int], torch.Tensor]]]:
    """Plain forwards of the records grouped by length: (records, site → [rows, L, dim]) per batch."""
    import torch

    sites = {key: work.site(*key) for key in sorted(wanted)}
    by_length: dict[int, list[int]] = defaultdict(list)
    for record, ids in ids_of.items():
        by_length[len(ids)].append(record)
    for length, records in sorted(by_length.items()):
        step = work.batch_rows(length)
        for start in range(0, len(records), step):
            group = records[start : start + step]
            batch = torch.tensor([ids_of[r] for r in group])
            with torch.inference_mode(), hooks.capturing(work.lm.model, list(sites.values())) as store:
                work.forward(batch)
            yield group, {key: store[site] for key, site in sites.items()}


def _capture(
    work: Workload, ids_of: dict[int, tuple[int, ...]], wanted: set[tuple[str, int]]
) -> dict[tuple[str, int], dict[int, torch.Tensor]]:
    """Activations [L, dim] of each record at each site."""
    acts: dict[tuple[str, int], dict[int, torch.Tensor]] = defaultdict(dict)
    for group, stored in _forwards(work, ids_of, wanted):
        for key, values in stored.items():
            for row, record in enumerate(group):
                acts[key][record] = values[row]  # [L, dim]
    return acts


def _means(
    work: Workload, ids_of: dict[int, tuple[int, ...]], index: int, wanted: set[tuple[str, int]], pooled: bool
) -> dict[Key, dict[int, torch.Tensor]]:
    """Per site: the mean per token length ([L, dim]) or pooled over every position ([dim]), summed
    batch by batch (only the sums are kept, however large the reference set)."""
    sums: dict[tuple[str, int], dict[int, torch.Tensor]] = defaultdict(dict)
    counts: dict[int, int] = defaultdict(int)
    for group, stored in _forwards(work, ids_of, wanted):
        length = stored[next(iter(stored))].shape[1]
        bucket = POOLED if pooled else length
        counts[bucket] += len(group) * (length if pooled else 1)
        for key, values in stored.items():
            part = values.flatten(0, 1).sum(0) if pooled else values.sum(0)  # [dim] or [L, dim]
            sums[key][bucket] = sums[key][bucket] + part if bucket in sums[key] else part
    return {
        (index, *key): {bucket: total / counts[bucket] for bucket, total in per.items()}
        for key, per in sums.items()
    }
