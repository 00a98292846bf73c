"""Metrics as pure functions of last-position logits, and the one table that names them.

Per row: `target_prob`, `target_logprob`, `target_logit`, `target_rank`, `logit_diff` (target −
foil) and `kl` (KL(clean ‖ patched)). Per cell, after averaging noise samples: `indirect_effect`
(p_patched − p_corrupted, Meng et al. 2022), its normalised form (divided by p_clean −
p_corrupted) and `logit_diff_norm` ((ld_patched − ld_corrupted) / (ld_clean − ld_corrupted)).
"Clean" is the run activations are copied from (the source prompt, or the uncorrupted base);
"corrupted" is the base input with its corruption and no site intervention.

Adding a metric is one `Metric` row in `METRICS` (the schema, the reference docs, the report's
ordering and the summary's warnings read it); a new per-row quantity also needs its function here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

Need = Literal["target", "foil", "contrast"]


@dataclass(frozen=True)
class RowInputs:
    """What per-row metric functions read: float logits and the shared target quantities."""

    logits: torch.Tensor  # [n, vocab] float32
    target: torch.Tensor  # [n] long (-1 when absent)
    foil: torch.Tensor  # [n] long (-1 when absent)
    target_logit: torch.Tensor  # [n]
    logsumexp: torch.Tensor  # [n]
    clean_logits: torch.Tensor | None  # [n, vocab]


RowFn = Callable[[RowInputs], "torch.Tensor | None"]
CellFn = Callable[[dict[str, float], dict[str, float], dict[str, float]], float]


@dataclass(frozen=True)
class Metric:
    """One row of the metric table."""

    name: str
    description: str
    direction: Literal["higher", "lower", "either"]  # which way a larger effect on the answer moves it
    needs: frozenset[Need]  # record fields (target, foil) or a corrupted/source contrast run it needs
    quantity: str | None  # the per-row quantity it is computed from (None: not a number)
    row: RowFn | None = None  # per-row value from logits (row metrics)
    cell: CellFn | None = None  # from sample-averaged (patched, corrupted, clean) quantities
    vocabulary: bool = False  # reads the whole vocabulary again: computed only when asked for
    estimable: bool = True  # attribution patching can estimate it from the gradient of `quantity`


def _target_prob(x: RowInputs) -> torch.Tensor:
    return (x.target_logit - x.logsumexp).exp()


def _target_logprob(x: RowInputs) -> torch.Tensor:
    return x.target_logit - x.logsumexp


def _target_rank(x: RowInputs) -> torch.Tensor:
    return (x.logits > x.target_logit.unsqueeze(1)).sum(dim=1).float()


def _logit_diff(x: RowInputs) -> torch.Tensor:
    return x.target_logit - x.logits.gather(1, x.foil.clamp(min=0).unsqueeze(1)).squeeze(1)


def _kl(x: RowInputs) -> torch.Tensor | None:
    import torch

    if x.clean_logits is None:
        return None
    logp = torch.log_softmax(x.logits, dim=-1)
    clean_logp = torch.log_softmax(x.clean_logits.float(), dim=-1)
    return (clean_logp.exp() * (clean_logp - logp)).sum(dim=-1)


def _patched(name: str) -> CellFn:
    return lambda patched, corrupted, clean: patched.get(name, float("nan"))


def _effect(name: str) -> CellFn:
    return lambda patched, corrupted, clean: patched[name] - corrupted[name]


def _recovered(name: str) -> CellFn:
    return lambda patched, corrupted, clean: normalised(patched[name], corrupted[name], clean[name])


def _per_row(
    name: str,
    fn: RowFn,
    needs: frozenset[Need],
    description: str,
    direction: Literal["higher", "lower", "either"] = "higher",
    vocabulary: bool = False,
    estimable: bool = True,
) -> Metric:
    """A table row for a per-row metric (its cell value is the patched rows' mean)."""
    return Metric(name, description, direction, needs, name, fn, _patched(name), vocabulary, estimable)


_T: frozenset[Need] = frozenset({"target"})
_TF: frozenset[Need] = frozenset({"target", "foil"})

# most informative first: reports and figures show the first one that was computed
METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric(
            "indirect_effect",
            "p_patched − p_corrupted of the target (Meng et al. 2022).",
            "higher",
            _T | {"contrast"},
            "target_prob",
            cell=_effect("target_prob"),
        ),
        Metric(
            "logit_diff_norm",
            "(ld_patched − ld_corrupted) / (ld_clean − ld_corrupted): 1 = fully restored.",
            "higher",
            _TF | {"contrast"},
            "logit_diff",
            cell=_recovered("logit_diff"),
        ),
        Metric(
            "indirect_effect_norm",
            "(p_patched − p_corrupted) / (p_clean − p_corrupted): 1 = fully restored.",
            "higher",
            _T | {"contrast"},
            "target_prob",
            cell=_recovered("target_prob"),
        ),
        _per_row("logit_diff", _logit_diff, _TF, "Target logit − foil logit."),
        _per_row("target_prob", _target_prob, _T, "Probability of the target's first token."),
        _per_row("target_logprob", _target_logprob, _T, "Log-probability of the target's first token."),
        _per_row(
            "kl", _kl, frozenset(), "KL(clean ‖ patched) of the next-token distribution.", "either", True
        ),
        _per_row("target_logit", lambda x: x.target_logit, _T, "Logit of the target's first token."),
        _per_row(
            "target_rank",
            _target_rank,
            _T,
            "Rank of the target among all tokens (0 = top).",
            "lower",
            vocabulary=True,
            estimable=False,  # a step function: its gradient says nothing
        ),
        Metric(
            "top_k",
            "The most likely next tokens with their probabilities (output.top_k).",
            "either",
            frozenset(),
            None,
            estimable=False,
        ),
    )
}
ROW_METRICS: tuple[str, ...] = tuple(name for name, m in METRICS.items() if m.row is not None)


def needing(need: Need, names: list[str]) -> list[str]:
    """The metrics among `names` that need this record field or contrast run."""
    return [name for name in names if name in METRICS and need in METRICS[name].needs]


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
    t_logit = logits.gather(1, target.clamp(min=0).unsqueeze(1)).squeeze(1)
    x = RowInputs(logits, target, foil, t_logit, torch.logsumexp(logits, dim=-1), clean_logits)
    nan = torch.full_like(t_logit, float("nan"))
    has = {"target": target >= 0, "foil": foil >= 0}
    out: dict[str, torch.Tensor] = {}
    for name in ROW_METRICS:
        m = METRICS[name]
        if name == "target_rank" and not rank:
            continue
        value = m.row(x) if m.row is not None else None
        if value is None:
            continue
        for need in ("target", "foil"):
            if need in m.needs:
                value = torch.where(has[need], value, nan)
        out[name] = value
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
        fn = METRICS[name].cell if name in METRICS else None
        if fn is not None:
            out[name] = fn(patched, corrupted, clean)
    return out


def top_k(probs: torch.Tensor, k: int, tokenizer: Any) -> list[list]:
    """[[token, prob], ...] of the k most likely next tokens for a `[vocab]` distribution."""
    import torch

    values, ids = torch.topk(probs.float(), k)
    tokens = tokenizer.convert_ids_to_tokens(ids.tolist())
    return [[str(t), round(float(v), 6)] for t, v in zip(tokens, values, strict=True)]
