"""What every execution stage reads: the config, the loaded model, the prompts, the plan, the scoring.

A `Workload` is built once per corruption variant and passed to the baseline runs, the patch
builder, the shortcut state, the metric rows and the `execute` loop; none of them reads another's
internals. `Scoring` is the seam for how an answer is scored: the default scores the token that
follows the prompt (ROME's first token); `answers.FullAnswer` scores a whole multi-token answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ivx.config.loader import LoadedConfig
from ivx.config.schema import Contrast, Corrupt, Experiment
from ivx.engine import binding, shortcuts
from ivx.model import components, memory
from ivx.plan.grid import Cell, Plan
from ivx.plan.tokenization import TokenizedPrompt
from ivx.store.vectors import load_vector

if TYPE_CHECKING:
    import torch

    from ivx.model.components import Site
    from ivx.model.loading import LoadedModel


def single_corruption(exp: Experiment) -> Corrupt | None:
    """The corruption of one variant (`experiment.variants` splits a list into one config each)."""
    corrupt = exp.corrupt
    if isinstance(corrupt, list):
        raise ValueError("a list of corruptions runs as one workload per corruption (experiment.variants)")
    return corrupt


class Scoring:
    """How runs are scored: the next token after the prompt (the default, ROME's first token)."""

    all_logits = False  # forwards keep every position's logits
    shortcuts_off: str | None = None  # why every exact shortcut is off, if it must be

    def rows(self, rows: int, length: int) -> int:
        """Rows per forward given the budget's `rows` for prompts of `length` tokens."""
        return rows

    def captured(self, prompt: int, ids: tuple[int, ...], logits: torch.Tensor) -> torch.Tensor:
        """The [vocab] logits a clean or source capture of `prompt` (input `ids`) is scored by."""
        return logits

    def ran(self, cells: list[Cell], logits: torch.Tensor, samples: int) -> torch.Tensor:
        """The logits a batch of cells (or corrupted baselines) is scored by: [rows, vocab] or as given."""
        return logits

    def reference(self, prompt: int, corrupted: dict[str, float], clean: dict[str, float]) -> None:
        """Adjust a prompt's (corrupted, clean) reference values in place."""

    def patched(self, cell: Cell, values: dict[str, float]) -> dict[str, float]:
        """A cell's sample-averaged metric values, adjusted."""
        return values

    def truncated(self, prompts: list[TokenizedPrompt]) -> list[TokenizedPrompt]:
        """The prompts token replacement swaps subjects in."""
        return prompts

    def continued(self, prompt: int, ids: tuple[int, ...]) -> tuple[int, ...]:
        """A replaced prompt's input ids as the runs feed them."""
        return ids


@dataclass
class Workload:
    """One experiment variant on one loaded model: config, prompts, plan and scoring."""

    cfg: LoadedConfig
    lm: LoadedModel
    prompts: dict[int, TokenizedPrompt]
    plan: Plan
    scoring: Scoring = field(default_factory=Scoring)
    sites: dict[tuple[str, int], Site] = field(default_factory=dict)
    vectors: dict[str, torch.Tensor] = field(default_factory=dict)
    contrasts: dict[tuple[Contrast, Site], torch.Tensor] = field(default_factory=dict)

    @property
    def exp(self) -> Experiment:
        """The validated experiment."""
        return self.cfg.experiment

    @property
    def corrupt(self) -> Corrupt | None:
        """This variant's corruption, if any."""
        return single_corruption(self.exp)

    @property
    def samples(self) -> int:
        """Rows per cell: the noise samples (1 without noise)."""
        corrupt = self.corrupt
        return corrupt.samples if corrupt is not None and corrupt.kind == "noise" else 1

    def site(self, component: str, layer: int) -> Site:
        """Resolve (and cache) the Site of a component at a layer."""

        key = (component, layer)
        if key not in self.sites:
            self.sites[key] = components.resolve(self.lm.model, self.lm.info, component, layer)
        return self.sites[key]

    def forward(
        self,
        ids: torch.Tensor,
        all_logits: bool = False,
        past: Any = None,
        keep_cache: bool = False,
        start: int = 0,
    ) -> tuple[torch.Tensor, Any]:
        """Logits of a batch of equal-length rows (see `shortcuts.forward`)."""
        return shortcuts.forward(self.lm, ids, all_logits or self.scoring.all_logits, past, keep_cache, start)

    def batch_rows(self, length: int) -> int:
        """Rows per forward pass from the device's memory budget (or the configured size)."""
        rows = memory.batch_rows(self.exp.batch, self.exp.output.logits, self.lm, length)
        return self.scoring.rows(rows, length)

    def vector(self, ref: str, name: str) -> torch.Tensor:
        """A steering vector by reference, loaded once."""
        if ref not in self.vectors:
            self.vectors[ref] = load_vector(ref, name, self.cfg.path.parent)
        return self.vectors[ref]

    def contrast(self, contrast: Contrast, site: Site) -> torch.Tensor:
        """A steering vector from contrast prompts at a site (as `ivx generate` builds it), computed once."""
        key = (contrast, site)
        if key not in self.contrasts:
            bos = any(p.bos for p in self.prompts.values())  # the prompts' BOS convention
            self.contrasts[key] = binding.contrast_vector(self.lm, site, contrast, self.cfg.path.parent, bos)
        return self.contrasts[key]

    def length(self, cell: Cell) -> int:
        """Token length of a cell's prompt (as the runs feed it)."""
        return self.prompts[cell.prompt].length
