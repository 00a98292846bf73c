"""Metrics as pure functions of last-position logits.

Per row: `target_prob`, `target_logit`, `target_rank`, `logit_diff` (target − foil) and `kl`
(KL(clean ‖ patched)). Per cell, after averaging noise samples: `indirect_effect`
(p_patched − p_corrupted, Meng et al. 2022), its normalised form (divided by p_clean −
p_corrupted) and `logit_diff_norm` ((ld_patched − ld_corrupted) / (ld_clean − ld_corrupted)).
"Clean" is the run activations are copied from (the source prompt, or the uncorrupted base);
"corrupted" is the base input with its corruption and no site intervention.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

ROW_METRICS: tuple[str, ...] = ("target_prob", "target_logit", "target_rank", "logit_diff", "kl")


def row_values(
    logits: torch.Tensor,  # [n, vocab]
    target: torch.Tensor,  # [n] long (or -1 when absent)
    foil: torch.Tensor,  # [n] long (or -1 when absent)
    clean_logits: torch.Tensor | None = None,  # [n, vocab]
    rank: bool = True,
) -> dict[str, torch.Tensor]:
    """Every per-row metric that can be computed from these logits (`kl` only with clean
    logits, `target_rank` unless `rank=False`: both read the whole vocabulary again)."""
    import torch

    logits = logits.float()
    safe_t = target.clamp(min=0).unsqueeze(1)
    out: dict[str, torch.Tensor] = {}
    t_logit = logits.gather(1, safe_t).squeeze(1)
    out["target_prob"] = (t_logit - torch.logsumexp(logits, dim=-1)).exp()
    out["target_logit"] = t_logit
    if rank:
        out["target_rank"] = (logits > t_logit.unsqueeze(1)).sum(dim=1).float()
    safe_f = foil.clamp(min=0).unsqueeze(1)
    out["logit_diff"] = t_logit - logits.gather(1, safe_f).squeeze(1)
    nan = torch.full_like(t_logit, float("nan"))
    for key in ("target_prob", "target_logit", "target_rank"):
        if key in out:
            out[key] = torch.where(target >= 0, out[key], nan)
    out["logit_diff"] = torch.where((target >= 0) & (foil >= 0), out["logit_diff"], nan)
    if clean_logits is not None:
        logp = torch.log_softmax(logits, dim=-1)
        clean_logp = torch.log_softmax(clean_logits.float(), dim=-1)
        out["kl"] = (clean_logp.exp() * (clean_logp - logp)).sum(dim=-1)
    return out


def normalised(patched: float, corrupted: float, clean: float) -> float:
    """(patched − corrupted) / (clean − corrupted); NaN when clean ≈ corrupted."""
    denom = clean - corrupted
    if not math.isfinite(denom) or abs(denom) < 1e-9:
        return float("nan")
    return (patched - corrupted) / denom


def cell_values(
    names: list[str],
    patched: dict[str, float],
    corrupted: dict[str, float],
    clean: dict[str, float],
) -> dict[str, float]:
    """The requested metrics for one cell from sample-averaged patched/corrupted/clean values."""
    out: dict[str, float] = {}
    for name in names:
        if name in ("target_prob", "target_logit", "target_rank", "logit_diff", "kl"):
            out[name] = patched.get(name, float("nan"))
        elif name == "indirect_effect":
            out[name] = patched["target_prob"] - corrupted["target_prob"]
        elif name == "indirect_effect_norm":
            out[name] = normalised(patched["target_prob"], corrupted["target_prob"], clean["target_prob"])
        elif name == "logit_diff_norm":
            out[name] = normalised(patched["logit_diff"], corrupted["logit_diff"], clean["logit_diff"])
    return out


def top_k(probs: torch.Tensor, k: int, tokenizer: object) -> list[list]:
    """[[token, prob], ...] of the k most likely next tokens for a `[vocab]` distribution."""
    import torch

    values, ids = torch.topk(probs.float(), k)
    tokens = tokenizer.convert_ids_to_tokens(ids.tolist())  # type: ignore[attr-defined]
    return [[str(t), round(float(v), 6)] for t, v in zip(tokens, values, strict=True)]
