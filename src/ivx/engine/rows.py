"""Results rows: a cell's metrics from its logits and its prompt's clean and corrupted reference values.

Per-row values (`metrics.row_values`) are averaged over a cell's noise samples, then combined with
the prompt's reference values — the corrupted baseline and the clean (or source) run — into the
requested metrics (`metrics.cell_values`). Reference values are computed once per prompt. `row` is
the one row builder of every method (exact and path patching from logits, attribution from its
estimates), so a row has the same keys, order and meaning whichever method made it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ivx.core import metrics
from ivx.engine.baselines import Baselines
from ivx.engine.workload import Workload
from ivx.plan.grid import Cell

if TYPE_CHECKING:
    import torch

Values = dict[str, float]


class Rows:
    """Metric rows of one workload's cells against its baselines."""

    def __init__(self, work: Workload, base: Baselines) -> None:
        self.work = work
        self.base = base
        self._reference: dict[int, tuple[Values, Values]] = {}

    def reference_values(self, prompt: int) -> tuple[Values, Values]:
        """(corrupted, clean) sample-averaged metric values of one prompt (computed once)."""
        if prompt not in self._reference and prompt in self.base.corrupt_logits:
            self._reference[prompt] = self._reference_values(prompt)
        return self._reference.get(prompt) or self._reference_values(prompt)

    def _reference_values(self, prompt: int) -> tuple[Values, Values]:
        import torch

        p = self.work.prompts[prompt]
        corrupt = self.base.corrupt_logits.get(prompt)
        if corrupt is None:
            corrupt = self.base.clean_logits[prompt].unsqueeze(0)
        clean_logits = self.base.reference_logits(prompt).unsqueeze(0)
        t = torch.tensor([p.target_id if p.target_id is not None else -1])
        f = torch.tensor([p.foil_id if p.foil_id is not None else -1])
        cv = metrics.row_values(corrupt, t.repeat(len(corrupt)), f.repeat(len(corrupt)))
        kv = metrics.row_values(clean_logits, t, f)
        corrupted = {k: float(v.mean()) for k, v in cv.items()}
        clean = {k: float(v.mean()) for k, v in kv.items()}
        self.work.scoring.reference(prompt, corrupted, clean)
        return corrupted, clean

    def batch_values(self, cells: list[Cell], last: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-row metric values of a batch's last-position logits ([rows, vocab], `samples` per cell)."""
        import torch

        S, exp = self.work.samples, self.work.exp

        def ids_of(attr: str) -> torch.Tensor:
            raw = [getattr(self.work.prompts[c.prompt], attr) for c in cells]
            return torch.tensor([-1 if v is None else v for v in raw]).repeat_interleave(S)

        ref = None
        if "kl" in exp.metrics:
            ref = torch.stack([self.base.reference_logits(c.prompt) for c in cells]).repeat_interleave(S, 0)
        rank = "target_rank" in exp.metrics
        return metrics.row_values(last.cpu(), ids_of("target_id"), ids_of("foil_id"), ref, rank=rank)

    def row(
        self,
        cell: Cell,
        patched: Values,
        last: torch.Tensor | None = None,
        run: Values | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The results row of a cell, whichever method computed it (the one row builder).

        `patched` holds the cell's sample-averaged metric values: from its `[samples, vocab]`
        logits `last` (exact and path patching) or estimated (attribution). The requested metrics
        compare them with the prompt's corrupted and clean reference values; `run` supplies the
        value of an estimated quantity the references lack. Keys, in order: cell, prompt_index,
        the grid point, the metrics, p_clean/p_corrupted, top_k (with logits), then `extra`.
        """
        exp = self.work.exp
        patched = self.work.scoring.patched(cell, patched)
        corrupted, clean = self.reference_values(cell.prompt)
        if run is not None:
            corrupted = {**corrupted, **{k: v for k, v in run.items() if k not in corrupted}}
        names = [m for m in exp.metrics if m != "top_k"]
        row: dict[str, Any] = {"cell": cell.index, "prompt_index": cell.prompt, **dict(cell.point)}
        row.update(metrics.cell_values(names, patched, corrupted, clean))
        if "target_prob" in clean and self.work.prompts[cell.prompt].target_id is not None:
            row["p_clean"] = clean["target_prob"]
            row["p_corrupted"] = corrupted["target_prob"]
        if "top_k" in exp.metrics and last is not None:
            import torch

            probs = torch.softmax(last.float(), dim=-1).mean(0)
            row["top_k"] = metrics.top_k(probs, exp.output.top_k, self.work.lm.tokenizer)
        row.update(extra or {})
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
