"""Interchange intervention training (IIT) of one trainable intervention at one site.

The model is frozen; the base prompt runs with the learned subspace interchanged from the
source prompt's activation at the site (placed by `ivx.patches` like every other edit), and the
loss is the cross entropy of the counterfactual target. Interchange intervention accuracy (IIA)
is the fraction of records whose argmax under the intervention is that target.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ivx.engine import das, patches
from ivx.model import hooks

if TYPE_CHECKING:
    import torch

    from ivx.config.schema import Intervention
    from ivx.config.settings import Train
    from ivx.core.interventions import EditFn
    from ivx.model.components import Site
    from ivx.model.loading import LoadedModel
    from ivx.plan.edits import Edit
    from ivx.plan.tokenization import TokenizedPrompt


@dataclass
class Example:
    """One training record, tokenized, with its source activation at the site."""

    ids: list[int]
    positions: tuple[int, ...]
    source: torch.Tensor  # [n_pos, dim]
    target: int
    edit: Edit  # the planned edit at the trained site (its positions in this record)


def examples_of(
    lm: LoadedModel, site: Site, planned: Sequence[tuple[TokenizedPrompt, Edit]]
) -> list[Example]:
    """Training examples from planned edits: the source run's activation at each edit's site."""
    import torch

    out = []
    for p, edit in planned:
        assert p.source_ids is not None and p.target_id is not None  # the train-mode plan checked both
        with torch.inference_mode(), hooks.capturing(lm.model, [site]) as store:
            lm.model(input_ids=torch.tensor([p.source_ids], device=lm.device))
        source = store[site][0, list(edit.source_positions)].clone()
        out.append(Example(list(p.base_ids), edit.positions, source, p.target_id, edit))
    return out


def _batches(examples: list[Example], size: int, rng: random.Random | None) -> list[list[Example]]:
    """Batches of equal-length prompts (no padding needed)."""
    by_len: dict[int, list[Example]] = {}
    for ex in examples:
        by_len.setdefault(len(ex.ids), []).append(ex)
    batches = []
    for group in by_len.values():
        if rng is not None:
            rng.shuffle(group)
        batches += [group[i : i + size] for i in range(0, len(group), size)]
    if rng is not None:
        rng.shuffle(batches)
    return batches


def _forward(lm: LoadedModel, site: Site, batch: list[Example], fn: EditFn) -> torch.Tensor:
    """Last-position logits of the base prompts with `fn` interchanging at the site."""
    import torch

    ids = torch.tensor([ex.ids for ex in batch], device=lm.device)
    placed = [
        patches.Placed(ex.edit, torch.full((len(ex.positions),), r), torch.tensor(ex.positions), ex.source)
        for r, ex in enumerate(batch)
    ]
    with hooks.patching(lm.model, patches.build(placed, lambda c, lay: site, lambda e: fn, device=lm.device)):
        return lm.model(input_ids=ids, logits_to_keep=1).logits[:, -1].float()


def iia(lm: LoadedModel, site: Site, examples: list[Example], fn: EditFn, batch_size: int = 128) -> float:
    """Interchange intervention accuracy: argmax under the intervention == counterfactual target."""
    import torch

    correct = 0
    with torch.no_grad():
        for batch in _batches(examples, batch_size, None):
            logits = _forward(lm, site, batch, fn)
            correct += int((logits.argmax(-1).cpu() == torch.tensor([ex.target for ex in batch])).sum())
    return correct / max(1, len(examples))


@dataclass
class _Progress:
    """Training state that a checkpoint carries across an interruption."""

    epoch: int = 0  # the next epoch to run
    best: float = -1.0
    best_state: dict[str, Any] | None = None
    stale: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def _resume(checkpoint: Path | None, mod: Any, optim: Any, log: Callable[[str], object]) -> _Progress:
    """The progress saved in `checkpoint` (module and optimizer restored), or a fresh start."""
    import torch

    if checkpoint is None or not checkpoint.is_file():
        return _Progress()
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    mod.load_state_dict(state["module"])
    optim.load_state_dict(state["optim"])
    progress = _Progress(
        state["epoch"] + 1, state["best"], state["best_state"], state["stale"], json.loads(state["history"])
    )
    log(f"resumed from {checkpoint} at epoch {progress.epoch}")
    return progress


def _save(checkpoint: Path, mod: Any, optim: Any, epoch: int, progress: _Progress) -> None:
    import torch

    torch.save(
        {
            "module": mod.state_dict(),
            "optim": optim.state_dict(),
            "epoch": epoch,
            "best": progress.best,
            "stale": progress.stale,
            "best_state": progress.best_state,
            "history": json.dumps(progress.history),
        },
        checkpoint,
    )


def _epoch(lm: LoadedModel, site: Site, mod: Any, optim: Any, batches: list[list[Example]]) -> list[float]:
    """One pass of AdamW steps over the batches; the loss of each step."""
    import torch

    losses = []
    for batch in batches:
        logits = _forward(lm, site, batch, mod)
        target = torch.tensor([ex.target for ex in batch], device=lm.device)
        loss = torch.nn.functional.cross_entropy(logits, target)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        losses.append(float(loss.detach()))
    return losses


def train_point(
    lm: LoadedModel,
    site: Site,
    iv: Intervention,
    settings: Train,
    train: list[Example],
    held: list[Example],
    seed: int,
    log: Callable[[str], object],
    checkpoint: Path | None = None,
) -> dict[str, Any]:
    """Train one intervention; return its module, history and held-out IIA."""
    import torch

    torch.manual_seed(seed)
    mod = das.module(iv.kind, site.dim, iv).to(lm.device)
    control = iia(lm, site, held, das.module(iv.kind, site.dim, iv).to(lm.device))  # untrained: random basis
    optim = torch.optim.AdamW(mod.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    progress = _resume(checkpoint, mod, optim, log)
    rng = random.Random(seed)
    temps = iv.temperature or [1.0, 0.05]
    step = 0
    for epoch in range(progress.epoch, settings.epochs):
        if hasattr(mod, "temperature"):  # boundless/sigmoid: anneal the boundary temperature
            frac = epoch / max(1, settings.epochs - 1)
            mod.temperature.fill_(temps[0] * (temps[1] / temps[0]) ** frac)
        losses = _epoch(lm, site, mod, optim, _batches(train, settings.batch_size, rng))
        step += len(losses)
        score = iia(lm, site, held, mod)
        entry = {"epoch": epoch, "steps": step, "loss": sum(losses) / max(1, len(losses)), "iia": score}
        progress.history.append(entry)
        log(f"  epoch {epoch}: loss {entry['loss']:.4f}  held-out IIA {score:.3f}")
        if score > progress.best + 1e-9:
            progress.best, progress.stale = score, 0
            progress.best_state = {k: v.detach().clone() for k, v in mod.state_dict().items()}
        else:
            progress.stale += 1
        if checkpoint is not None:
            _save(checkpoint, mod, optim, epoch, progress)
        if settings.patience is not None and progress.stale >= settings.patience:
            log(f"  early stop: no IIA gain for {progress.stale} epochs")
            break
    if progress.best_state is not None:
        mod.load_state_dict(progress.best_state)
    return {
        "module": mod,
        "history": progress.history,
        "iia": iia(lm, site, held, mod),
        "control_iia": control,
        "train_iia": iia(lm, site, train, mod),
    }
