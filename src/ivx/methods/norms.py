"""Final norms the readouts can decode and linearise, told apart by what the module computes.

Every final norm ivx reads has the form

    N(x) = g ⊙ (x − c · mean(x)) / sqrt(mean((x − c · mean(x))²) + eps) + β

with `c` = 1 for LayerNorm (centring) or 0 for RMSNorm, and a gain `g` = `offset + γ`: `offset` 0
for the usual `γ` (Llama), 1 for Gemma's `(1 + γ)`; `γ` is all ones and `β` all zeros when the
module has no weight or bias (OLMo's non-affine LayerNorm). `classify` finds `c` and `offset` by
running a copy of the module with random parameters (meta modules are materialised first, so
validate can ask too) and matching its output to each form; a norm of no such form is refused.
The epsilon is the module's `eps` / `variance_epsilon` / `epsilon`, else measured from the copy on a
low-variance input (OLMo hard-codes 1e-5). `FAMILIES` states the same facts per `model_type` for
validate's recorded structure (model/skeleton), which has module names but no module code; a test
checks each row against `classify` on a model built from that family's config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ivx.core.errors import UserError

if TYPE_CHECKING:
    import torch


class ReadoutError(UserError, ValueError):
    """A model whose final norm or unembedding a readout cannot use."""


@dataclass(frozen=True)
class NormKind:
    """One form of final norm: centred or not, and the gain's offset (`offset + γ`)."""

    centre: bool
    offset: float

    @property
    def name(self) -> str:
        """`LayerNorm`, `RMSNorm`, `RMSNorm (1 + γ)`, …"""
        base = "LayerNorm" if self.centre else "RMSNorm"
        return f"{base} (1 + γ)" if self.offset else base


LAYER_NORM, RMS_NORM = NormKind(True, 0.0), NormKind(False, 0.0)
GEMMA_NORM = NormKind(False, 1.0)
KINDS: tuple[NormKind, ...] = (LAYER_NORM, RMS_NORM, GEMMA_NORM, NormKind(True, 1.0))


@dataclass(frozen=True)
class Family:
    """What a model family's final norm is, and the norms its blocks apply to the attention and MLP
    outputs before adding them to the residual stream (Gemma 2/3, OLMo 2; relative to the block),
    which DLA linearises like the final norm."""

    norm: NormKind
    post_norms: tuple[str, ...] = ()  # (after attention, after the MLP)
    softcap: bool = False  # the config may set `final_logit_softcapping`


_POST_NORMS = ("post_attention_layernorm", "post_feedforward_layernorm")
FAMILIES: dict[str, Family] = {
    **dict.fromkeys(("gpt2", "gpt_neox", "gptj", "opt", "phi", "olmo"), Family(LAYER_NORM)),
    **dict.fromkeys(("llama", "mistral", "mixtral", "qwen2", "qwen3", "phi3"), Family(RMS_NORM)),
    "olmo2": Family(RMS_NORM, post_norms=_POST_NORMS),
    "gemma": Family(GEMMA_NORM),
    "gemma2": Family(GEMMA_NORM, post_norms=_POST_NORMS, softcap=True),
    "gemma3_text": Family(GEMMA_NORM, post_norms=_POST_NORMS, softcap=True),
}
EPS_NAMES = ("eps", "variance_epsilon", "epsilon")


def formula(
    kind: NormKind, x: torch.Tensor, eps: float, weight: torch.Tensor | None, bias: torch.Tensor | None
) -> torch.Tensor:
    """N(x) of one kind, written out (float32; `[..., d]` → `[..., d]`)."""
    x = x.float()
    if kind.centre:
        x = x - x.mean(-1, keepdim=True)
    out = x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    gain = kind.offset + (weight.float() if weight is not None else 1.0)
    out = out * gain
    return out + bias.float() if bias is not None else out


def eps_of(norm: Any) -> float | None:
    """The epsilon the module declares, if it declares one."""
    for name in EPS_NAMES:
        value = getattr(norm, name, None)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def _copy(norm: Any) -> Any:
    """A float32 CPU copy of the module with random parameters (materialised if on meta)."""
    import copy

    import torch

    probe = copy.deepcopy(norm)
    probe.__dict__.pop("forward", None)  # accelerate's placement hook wraps forward per instance
    if any(p.is_meta for p in probe.parameters()):
        probe = probe.to_empty(device="cpu")
    probe = probe.float().cpu().requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in probe.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return probe


def classify(norm: Any, d_model: int, path: str) -> tuple[NormKind, float]:
    """(kind, eps) of a final norm module by running a copy; ReadoutError when no form matches."""
    import torch

    probe = _copy(norm)
    weight, bias = getattr(probe, "weight", None), getattr(probe, "bias", None)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, d_model, generator=gen) * 2 + 0.7  # [4, d]; a non-zero mean tells c apart
    try:
        with torch.no_grad():
            y = probe(x).float()  # [4, d]
    except Exception as exc:  # any failure means: not a norm ivx can read
        name = type(norm).__name__
        raise ReadoutError(f"the final norm {path} ({name}) cannot be run alone: {exc}") from None
    declared = eps_of(norm)
    for kind in KINDS:
        eps = declared if declared is not None else _measure_eps(probe, kind, d_model)
        want = formula(kind, x, eps, weight, bias)
        if want.shape == y.shape and torch.allclose(want, y, rtol=1e-4, atol=1e-5):
            return kind, eps
    raise ReadoutError(
        f"the final norm {path} is a {type(norm).__name__} that computes none of the forms readouts "
        "linearise: LayerNorm or RMSNorm, gain γ or 1 + γ, with or without weight and bias"
    )


def _measure_eps(probe: Any, kind: NormKind, d_model: int) -> float:
    """The epsilon of a module that declares none, from its output on a low-variance input."""
    import torch

    weight, bias = getattr(probe, "weight", None), getattr(probe, "bias", None)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, d_model, generator=gen, dtype=torch.float64) * 1e-3  # variance ≈ 1e-6 ~ eps
    with torch.no_grad():
        y = probe(x.float()).double()
    xc = x - x.mean(-1, keepdim=True) if kind.centre else x
    gain = kind.offset + (weight.double() if weight is not None else 1.0)
    shift = bias.double() if bias is not None else 0.0
    s = (gain * xc).norm() / (y - shift).norm()  # N(x) − β = g ⊙ xc / s
    return float(s**2 - xc.pow(2).mean())
