"""The activations an SAE trains on: one site, every token of every prompt, no padding.

Prompts of equal length run together (so no position is padding and each value equals the
prompt's own single run) under a read-only hook; the rows come out in prompt order, position
by position. A seeded split holds some rows out for the final evaluation, and `norm_scale` is the
factor that brings the mean activation norm to sqrt(d_in) while training.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ivx.methods.sae_train import generator
from ivx.model import hooks

if TYPE_CHECKING:
    import torch

    from ivx.model.components import Site
    from ivx.model.loading import LoadedModel
    from ivx.plan.tokenization import TokenizedPrompt


def collect(
    lm: LoadedModel,
    site: Site,
    prompts: Sequence[TokenizedPrompt],
    rows_per_forward: int = 64,
) -> torch.Tensor:
    """The site's activations `[tokens, d_in]` (float32, CPU) over every position of every prompt."""
    import torch

    by_length: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        by_length[p.length].append(i)
    per_prompt: list[torch.Tensor | None] = [None] * len(prompts)
    with torch.inference_mode():
        for group in by_length.values():
            for start in range(0, len(group), rows_per_forward):
                chunk = group[start : start + rows_per_forward]
                ids = torch.tensor([prompts[i].base_ids for i in chunk], device=lm.device)  # [b, seq]
                with hooks.capturing(lm.model, [site]) as store:
                    lm.model(input_ids=ids)
                acts = store[site].float().cpu()  # [b, seq, d_in]
                for j, i in enumerate(chunk):
                    per_prompt[i] = acts[j]
    return torch.cat([t for t in per_prompt if t is not None])  # [tokens, d_in]


def split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training indices, held-out indices) of `n` rows: a seeded shuffle, `fraction` held out."""
    import torch

    order = torch.randperm(n, generator=generator(seed, 999_999))
    held = int(n * fraction)
    return order[held:].sort().values, order[:held].sort().values


def norm_scale(acts: torch.Tensor) -> float:
    """The factor that makes the mean row norm of `acts` `[n, d_in]` sqrt(d_in)."""
    mean_norm = float(acts.norm(dim=-1).mean())
    return (acts.shape[-1] ** 0.5) / mean_norm if mean_norm > 0 else 1.0
