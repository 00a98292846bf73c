"""Reference runs, once per prompt: the clean and source captures, the corruption's noise and tokens.

The clean run is the uncorrupted base prompt, the source run the counterfactual prompt; each is
one batched forward per prompt length that captures the activations cells copy from. The
corruption is drawn here too: Gaussian noise per (prompt, sample) from a seeded generator,
independent of batching (`interventions.noise`), or symmetric subject replacement
(`tokenization.replacements`). The corrupted baseline itself runs through the cell machinery
(`execution.corrupted_pass`), since it feeds the exact shortcuts.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ivx.core import interventions
from ivx.core.errors import ConfigError
from ivx.engine.workload import Workload
from ivx.model import hooks
from ivx.plan import tokenization
from ivx.plan.grid import Plan

if TYPE_CHECKING:
    import torch

SiteKey = tuple[str, int]  # (component, layer)
Acts = dict[SiteKey, dict[int, "torch.Tensor"]]  # site → prompt → activations


@dataclass
class Baselines:
    """Per-prompt reference runs: clean (uncorrupted base), source, corrupted (per sample)."""

    clean_logits: dict[int, torch.Tensor] = field(default_factory=dict)  # [vocab]
    source_logits: dict[int, torch.Tensor] = field(default_factory=dict)  # [vocab]
    corrupt_logits: dict[int, torch.Tensor] = field(default_factory=dict)  # [samples, vocab]
    clean_acts: Acts = field(default_factory=dict)  # [seq, d] per prompt
    corrupt_acts: Acts = field(default_factory=dict)  # [samples, seq, d] per prompt
    source_acts: Acts = field(default_factory=dict)  # [seq, d] per prompt
    corrupt_ids: dict[int, tuple[int, ...]] = field(default_factory=dict)  # replace-corruption inputs
    noise: dict[int, torch.Tensor] = field(default_factory=dict)  # [samples, n_pos, d]
    sigma: float | None = None

    def reference_logits(self, prompt: int) -> torch.Tensor:
        """The 'clean' run metrics compare to: the source run if there is one, else clean base."""
        return self.source_logits.get(prompt, self.clean_logits[prompt])

    def run_ids(self, work: Workload, prompt: int) -> tuple[int, ...]:
        """The input ids cells of `prompt` run: the corrupted tokens, else the base prompt."""
        return self.corrupt_ids.get(prompt, work.prompts[prompt].base_ids)


def needed(plan: Plan, source: str) -> set[SiteKey]:
    """The sites whose activations in run `source` (base, source, corrupted) some edit copies."""
    return {(e.component, e.layer) for c in plan.cells for e in c.edits if e.source == source}


def _groups(work: Workload, lengths: dict[int, int]) -> Iterator[list[int]]:
    by_len: dict[int, list[int]] = defaultdict(list)
    for prompt, length in lengths.items():
        by_len[length].append(prompt)
    for length, items in sorted(by_len.items()):
        step = work.batch_rows(length)
        for i in range(0, len(items), step):
            yield items[i : i + step]


def capture(
    work: Workload, ids_of: dict[int, tuple[int, ...]], wanted: set[SiteKey]
) -> tuple[dict[int, torch.Tensor], Acts]:
    """Logits and activations at `wanted` sites of plain runs of `ids_of` (one forward per length group)."""
    import torch

    logits_out: dict[int, torch.Tensor] = {}
    acts: Acts = {key: {} for key in wanted}
    sites = {key: work.site(*key) for key in wanted}
    for group in _groups(work, {p: len(ids) for p, ids in ids_of.items()}):
        ids = torch.tensor([ids_of[p] for p in group])
        with hooks.capturing(work.lm.model, list(sites.values())) as store:
            logits, _ = work.forward(ids)
        for row, prompt in enumerate(group):
            logits_out[prompt] = work.scoring.captured(prompt, ids_of[prompt], logits[row].cpu())
            for key, site in sites.items():
                acts[key][prompt] = store[site][row]
    return logits_out, acts


def sources(work: Workload) -> dict[int, tuple[int, ...]]:
    """The source prompts a capture must run: their logits are the reference without a corruption."""
    with_source = {p.index: p.source_ids for p in work.prompts.values() if p.source_ids is not None}
    return with_source if with_source and (needed(work.plan, "source") or not work.corrupt) else {}


def riders(work: Workload, fused: bool) -> dict[int, tuple[int, ...]]:
    """The source runs that ride in the corrupted baseline's forward (`execution.corrupted_pass`).

    When the clean captures are `fused` into that pass (no corruption, prefix reuse on), a source
    prompt as long as its base prompt runs as an extra row of the same forward, with no edits, so
    the pair costs one forward reading the weights once instead of two.
    """
    if not fused:
        return {}
    return {p: ids for p, ids in sources(work).items() if len(ids) == work.prompts[p].length}


def capture_clean_and_source(work: Workload, base: Baselines, fused: bool, skip: set[int]) -> None:
    """The clean captures (unless `fused` into the corrupted baseline pass) and the source captures
    (but those of the prompts in `skip`, which ride in that pass: `riders`)."""
    if not fused:
        base.clean_logits, base.clean_acts = capture(
            work, {p.index: p.base_ids for p in work.prompts.values()}, needed(work.plan, "base")
        )
    with_source = {p: ids for p, ids in sources(work).items() if p not in skip}
    if with_source:
        base.source_logits, base.source_acts = capture(work, with_source, needed(work.plan, "source"))


def corrupt_inputs(work: Workload, base: Baselines) -> None:
    """Draw the noise (`kind: noise`) or the replaced tokens (`kind: replace`) of every prompt."""
    corrupt = work.corrupt
    if corrupt is not None and corrupt.kind == "noise":
        draw_noise(work, base)
    elif corrupt is not None and corrupt.kind == "replace":
        base.corrupt_ids = replacements(work)


def draw_noise(work: Workload, base: Baselines) -> None:
    """Noise per (prompt, sample) at the corrupted positions: [samples, n_pos, d] per prompt."""
    import torch

    corrupt = work.corrupt
    assert corrupt is not None
    base.sigma = sigma(work)
    d = work.lm.model.get_input_embeddings().weight.shape[1]
    for p in work.prompts.values():
        n = len(work.plan.corrupt_positions[p.index])
        base.noise[p.index] = torch.stack(
            [
                interventions.noise(work.exp.seed, p.index, s, n, d, corrupt.scale * base.sigma)
                for s in range(work.samples)
            ]
        )


def sigma(work: Workload) -> float:
    """The noise's unit: a fixed value, the std of all token embeddings, or of the subjects' tokens."""
    corrupt = work.corrupt
    assert corrupt is not None
    weight = work.lm.model.get_input_embeddings().weight.detach().float()
    if isinstance(corrupt.sigma, float | int) and not isinstance(corrupt.sigma, bool):
        return float(corrupt.sigma)
    if corrupt.sigma == "embeddings":
        return float(weight.std())
    prompts = work.prompts.values()
    ids = [i for p in prompts if p.subject_span for i in p.base_ids[slice(*p.subject_span)]]
    if not ids:
        raise ConfigError(
            [work.cfg.problem(("corrupt", "sigma"), "sigma 'subjects' needs records with a `subject`")]
        )
    return float(weight[ids].std())


def replacements(work: Workload) -> dict[int, tuple[int, ...]]:
    """Symmetric token replacement: swap each subject for another (`tokenization.replacements`)."""

    prompts = work.scoring.truncated(list(work.prompts.values()))
    try:
        swapped = tokenization.replacements(work.lm.tokenizer, prompts, work.exp.seed)
    except tokenization.TokenizationError as exc:
        raise ConfigError(
            [work.cfg.problem(("corrupt", "kind"), f"prompt {i}: {m}") for i, _, m in exc.problems]
        ) from None
    return {i: work.scoring.continued(i, ids) for i, ids in swapped.items()}
