"""Execute a plan: baseline runs once per prompt, then cells packed into batched forwards.

`Executor` is a thin facade over the stages, each in its own module with typed inputs:
`workload` (config, model, prompts, plan, scoring), `baselines` (clean/source captures, noise,
replacements), `patches` (hook patches of a batch), `shortcut_state` (which exact shortcuts are
on, the state they reuse), `rows` (metric rows) and `execution` (the batched loop, the backend
seam). Clean and source activations are captured once per prompt; corruption noise is drawn per
(prompt, sample) from a seeded generator, independent of batching.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ivx.config.loader import LoadedConfig
from ivx.engine import ablation, baselines
from ivx.engine import loop as execution
from ivx.engine.baselines import Baselines
from ivx.engine.cellpatches import PatchBuilder
from ivx.engine.loop import CellOutput, Engine, Step
from ivx.engine.rows import Rows, Values
from ivx.engine.shortcut_state import ShortcutState
from ivx.engine.workload import Scoring, Workload
from ivx.model.memory import CPU_TOKENS, MAX_ROWS
from ivx.plan.grid import Cell, Plan
from ivx.plan.tokenization import TokenizedPrompt

if TYPE_CHECKING:
    import torch

    from ivx.config.schema import Experiment
    from ivx.model.components import Site
    from ivx.model.loading import LoadedModel

__all__ = ["CPU_TOKENS", "MAX_ROWS", "Baselines", "CellOutput", "Executor", "prepare"]


def prepare(engine: Engine) -> Baselines:
    """Capture clean and source activations once per prompt and run the corrupted baseline.

    Without a corruption the corrupted baseline is the clean run itself: with prefix reuse it
    runs once, keeping its KV cache and capturing the clean activations in the same pass, and
    source prompts of the same length run as extra rows of that forward (`baselines.riders`). Then
    the enabled shortcuts are probed on the first prompt (`ShortcutState.verify`).
    """
    work, base, state = engine.work, engine.base, engine.state
    engine.patches.ablations = ablation.prepare(work)
    if engine.patches.ablations.drawn or engine.patches.ablations.means:
        state.report["ablations"] = engine.patches.ablations.report(work)
    need_clean, need_corrupt = baselines.needed(work.plan, "base"), baselines.needed(work.plan, "corrupted")
    fused = work.corrupt is None and state.on("prefix_reuse")
    riders = baselines.riders(work, fused)
    baselines.capture_clean_and_source(work, base, fused, set(riders))
    baselines.corrupt_inputs(work, base)
    if work.corrupt is None and not state.on("prefix_reuse") and not state.on("layer_reuse"):
        base.corrupt_logits = {p: v.unsqueeze(0).clone() for p, v in base.clean_logits.items()}
    else:
        acts = execution.corrupted_pass(engine, need_corrupt | (need_clean if fused else set()), riders)
        base.corrupt_acts = {key: acts[key] for key in need_corrupt}  # [samples, seq, dim] per prompt
        if fused:
            base.clean_logits = {p: v[0].clone() for p, v in base.corrupt_logits.items()}
            base.clean_acts = {key: {p: t[0] for p, t in acts[key].items()} for key in need_clean}
    state.verify(engine.patches)
    return base


class Executor:
    """Runs the baselines and cells of one plan on one loaded model (a facade over `execution`)."""

    def __init__(
        self,
        cfg: LoadedConfig,
        lm: LoadedModel,
        prompts: list[TokenizedPrompt],
        plan: Plan,
        scoring: Scoring | None = None,
    ) -> None:
        work = Workload(cfg, lm, {p.index: p for p in prompts}, plan, scoring or Scoring())
        base = Baselines()
        self.engine = Engine(
            work, base, ShortcutState(work, base), PatchBuilder(work, base), Rows(work, base)
        )

    def prepare(self) -> Baselines:
        """Run the baselines (see `prepare`)."""
        return prepare(self.engine)

    def steps(self, cells: list[Cell]) -> list[Step]:
        """The batches `execute` runs for these cells (counted in the report)."""
        return execution.steps(self.engine, cells)

    def execute(self, cells: list[Cell]) -> Iterator[list[CellOutput]]:
        """Run cells in batches (after `prepare`); yield each batch's outputs."""
        yield from execution.execute(self.engine, self.steps(cells))

    def reference_values(self, prompt: int) -> tuple[Values, Values]:
        """(corrupted, clean) sample-averaged metric values of one prompt."""
        return self.engine.rows.reference_values(prompt)

    def batch_rows(self, length: int) -> int:
        """Rows per forward for prompts of `length` tokens (see `Workload.batch_rows`)."""
        return self.work.batch_rows(length)

    @property
    def vectors(self) -> dict[str, torch.Tensor]:
        """Steering vectors by reference, loaded once (a control may substitute its own first)."""
        return self.work.vectors

    def site(self, component: str, layer: int) -> Site:
        """Resolve (and cache) the Site of a component at a layer."""
        return self.engine.work.site(component, layer)

    @property
    def work(self) -> Workload:
        """The workload (config, model, prompts, plan, scoring)."""
        return self.engine.work

    @property
    def cfg(self) -> LoadedConfig:
        """The loaded config."""
        return self.engine.work.cfg

    @property
    def exp(self) -> Experiment:
        """The validated experiment."""
        return self.engine.work.exp

    @property
    def lm(self) -> LoadedModel:
        """The loaded model."""
        return self.engine.work.lm

    @property
    def prompts(self) -> dict[int, TokenizedPrompt]:
        """Prompts by index (as the runs feed them)."""
        return self.engine.work.prompts

    @property
    def plan(self) -> Plan:
        """The expanded plan."""
        return self.engine.work.plan

    @property
    def samples(self) -> int:
        """Rows per cell (noise samples)."""
        return self.engine.work.samples

    @property
    def base(self) -> Baselines:
        """The baseline runs."""
        return self.engine.base

    @property
    def report(self) -> dict[str, Any]:
        """What ran and how (shortcuts, packing per prompt length), for the manifest and the terminal."""
        return self.engine.state.report

    @report.setter
    def report(self, value: dict[str, Any]) -> None:
        self.engine.state.report = value

    @property
    def noop_cells(self) -> int:
        """Cells answered by the corrupted baseline without a forward pass."""
        return self.engine.state.noop_cells

    @noop_cells.setter
    def noop_cells(self, value: int) -> None:
        self.engine.state.noop_cells = value
