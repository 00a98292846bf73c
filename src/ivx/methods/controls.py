"""Built-in controls: the same experiment where there should be nothing to find.

Interventions find "effects" that are artefacts: DAS fits arbitrary label mappings and finds
subspaces in randomly initialised models (Arora et al. 2024, "CausalGym"; Wu et al. 2023).
`controls:` reruns the experiment beside the real one:

- `random_init`: the same sweep on a copy of the model re-initialised with the architecture's own
  initialiser, seeded by the experiment seed (no training, so no knowledge to localise);
- `placebo`: every activation copied in (vanilla patches, path-patching senders) and every
  fixed vector replaced by a random vector of the same norm at each position;
- `shuffled_labels` (`ivx train`): DAS trained and scored on counterfactual labels permuted
  across records (see `train`).

Each control's grid (and trace) goes into `summary.json → controls`, its rows into
`controls/<name>/results.jsonl`, its figures into `controls/<name>/plots/`; a warning fires
when a control's effects vary over the grid by at least `MARGIN` of the real spread
(raw metrics only: normalised ones divide by a gap that a control model may not have).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import TYPE_CHECKING, Any

from ivx.engine import answers
from ivx.methods import registry
from ivx.store.vectors import load_vector

if TYPE_CHECKING:
    import torch

    from ivx.engine.executor import Executor
    from ivx.plan.prepared import Prepared

RUN_CONTROLS: tuple[str, ...] = ("random_init", "placebo")


def reinitialised(lm: Any, seed: int) -> Any:
    """A copy of a loaded model with every weight re-drawn by the architecture's initialiser."""
    import torch

    model = copy.deepcopy(lm.model)
    torch.manual_seed(seed)
    with torch.no_grad():
        model.apply(model._init_weights)
    model.eval()
    return dataclasses.replace(lm, model=model)


def _like(value: torch.Tensor, seed: int) -> torch.Tensor:
    """A Gaussian tensor with `value`'s shape and the same norm along its last dimension."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(value.shape, generator=gen, dtype=torch.float32).to(value.device)
    scale = value.float().norm(dim=-1, keepdim=True) / noise.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return (noise * scale).to(value.dtype)


def placebo(executor: Executor, seed: int) -> None:
    """Swap every captured source activation and loaded vector for a norm-matched random one."""
    base = executor.base
    n = 0
    for store in (base.clean_acts, base.source_acts, base.corrupt_acts):
        for by_prompt in store.values():
            for prompt in list(by_prompt):
                by_prompt[prompt] = _like(by_prompt[prompt], seed * 7919 + n)
                n += 1
    refs = {e.vector: e.name for c in executor.plan.cells for e in c.edits if e.vector is not None}
    for ref, name in sorted(refs.items()):
        vector = load_vector(ref, name, executor.cfg.path.parent)
        executor.vectors[ref] = _like(vector, seed * 7919 + n)  # read by the executor before any file
        n += 1
    contrasts = {
        (e.contrast, e.component, e.layer) for c in executor.plan.cells for e in c.edits if e.contrast
    }
    for contrast, component, layer in sorted(contrasts, key=lambda c: (c[1], c[2], repr(c[0]))):
        site = executor.site(component, layer)  # contrast vectors: computed, then swapped the same way
        vector = executor.work.contrast(contrast, site)
        executor.work.contrasts[(contrast, site)] = _like(vector, seed * 7919 + n)
        n += 1


def run(preps: list[Prepared], name: str) -> tuple[list[dict[str, Any]], list[Any]]:
    """Every cell of the run again under one control: results rows and the executors."""

    seed = preps[0].cfg.experiment.seed
    lm = reinitialised(preps[0].lm, seed) if name == "random_init" else preps[0].lm
    rows: list[dict[str, Any]] = []
    executors = []
    for prep in preps:
        executor = answers.executor(prep.cfg, lm, prep.prompts, prep.plan)
        executor.prepare()
        if name == "placebo":
            placebo(executor, seed)
        executors.append(executor)
        for outputs in registry.execute(executor, list(prep.plan.cells)):
            for out in outputs:
                if prep.label is not None:
                    out.row["corruption"] = prep.label
                rows.append(out.row)
    return rows, executors
