"""The model's final norm and unembedding, applied to any residual and linearised for attribution.

The logit lens (nostalgebraist 2020) reads an intermediate residual `r` with the model's own
modules: `lm_head(final_norm(r))`, then the final logit soft-capping where the config sets it
(Gemma 2: `c · tanh(logits / c)`). Direct logit attribution needs the same map as a *linear*
function of the residual's parts, so the final norm's scale is frozen at the run's final
residual `x` (TransformerLens' `apply_ln_to_stack` convention); with the gain `g` (`γ`, `1 + γ` for
Gemma, ones without a weight, `norms`):

    LayerNorm:  N(x) = g ⊙ (x − mean(x)) / s + β,   s = sqrt(var(x) + eps)
    RMSNorm:    N(x) = g ⊙ x / s,                   s = sqrt(mean(x²) + eps)

With `s` fixed, `N(x) = Σ_c L(c) + β` for the parts `c` that sum to `x` (centring is linear), so
each part's contribution to a logit direction `u` (`W_U[target] − W_U[foil]`) is
`L(c) · u = c · (g ⊙ u / s)`, centred for LayerNorm; the constant `β · u + b_U · (…)` is the
bias term. The parts sum to the model's own logit difference exactly (up to float rounding).
Soft-capping is not linear and is not linearised: DLA refuses a soft-capped model (`dla.refusal`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ivx.methods.norms import FAMILIES, NormKind, ReadoutError, classify

if TYPE_CHECKING:
    import torch

# where decoder families keep the norm applied before the unembedding (first that exists)
FINAL_NORMS: tuple[str, ...] = (
    "transformer.ln_f",  # gpt2, gptj
    "model.norm",  # llama, mistral, qwen, gemma, olmo, phi3
    "gpt_neox.final_layer_norm",
    "model.decoder.final_layer_norm",  # opt
    "model.final_layernorm",  # phi
)


@dataclass(frozen=True)
class Unembed:
    """The final norm and unembedding of one model, how the norm is linearised, the soft-cap."""

    norm_path: str
    norm: Any  # the final norm module
    head: Any  # the output embedding (lm_head) module
    kind: NormKind  # centred or not, gain offset
    eps: float
    softcap: float | None  # final_logit_softcapping: logits = c · tanh(logits / c)

    @property
    def centre(self) -> bool:
        """LayerNorm subtracts the mean; RMSNorm does not."""
        return self.kind.centre

    def logits(self, resid: torch.Tensor) -> torch.Tensor:
        """The model's own final norm, unembedding and soft-cap: `[..., d_model]` → `[..., vocab]`."""
        out = self.head(self.norm(resid)).float()
        return out if self.softcap is None else self.softcap * (out / self.softcap).tanh()

    def describe(self) -> str:
        """One line for summary.json: which norm, and the linearisation used."""
        affine = "" if getattr(self.norm, "weight", None) is not None else " without weight"
        cap = f", then soft-cap {self.softcap:g}·tanh(logits/{self.softcap:g})" if self.softcap else ""
        centred = "centred, " if self.centre else ""
        return (
            f"{self.kind.name}{affine} {self.norm_path} (eps {self.eps:g}){cap}: {centred}scale frozen at "
            "the run's final residual (TransformerLens apply_ln_to_stack)"
        )


def find_norm(model: Any) -> tuple[str, Any]:
    """(path, module) of the model's final norm; ReadoutError naming the paths tried."""
    for path in FINAL_NORMS:
        try:
            return path, model.get_submodule(path)
        except AttributeError:
            continue
    raise ReadoutError(
        f"readouts need the final norm before the unembedding; {type(model).__name__} has none of "
        f"{', '.join(FINAL_NORMS)}"
    )


def softcap(model: Any, model_type: str) -> float | None:
    """The config's `final_logit_softcapping` (None for families that have none, without asking a
    recorded structure for a value it does not hold)."""
    family = FAMILIES.get(model_type)
    if family is not None and not family.softcap:
        return None
    value = getattr(model.config, "final_logit_softcapping", None)
    return float(value) if value else None


def of(model: Any) -> Unembed:
    """The Unembed of a loaded (or meta) causal LM; ReadoutError for norms ivx cannot linearise."""
    path, norm = find_norm(model)
    head = model.get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        raise ReadoutError(f"readouts need the unembedding matrix; {type(model).__name__} exposes none")
    kind, eps = classify(norm, int(head.weight.shape[-1]), path)
    return Unembed(path, norm, head, kind, eps, softcap(model, str(model.config.model_type)))


def _gain(u: Unembed, like: torch.Tensor) -> torch.Tensor:
    """g `[d]`: `offset + γ` (γ = ones without an affine weight)."""
    import torch

    weight = getattr(u.norm, "weight", None)
    gamma = torch.ones(like.shape[-1]) if weight is None else weight.detach().float().cpu()
    return u.kind.offset + gamma


def scale(u: Unembed, final: torch.Tensor) -> torch.Tensor:
    """The frozen scale `s` `[rows, 1]` of final residuals `[rows, d_model]` (float32)."""
    x = final.float()
    if u.centre:
        x = x - x.mean(-1, keepdim=True)
    return (x.pow(2).mean(-1, keepdim=True) + u.eps).sqrt()


def directions(
    u: Unembed, final: torch.Tensor, target: list[int], foil: list[int | None]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the residual-space read-out vector `[rows, d_model]` (g ⊙ (W_U[t] − W_U[f]) / s,
    centred for LayerNorm) and the constant bias term `[rows]` (β · (W_U[t] − W_U[f]) + b_U[t] − b_U[f]);
    without a foil the direction is the target logit alone."""
    import torch

    x = final.float().cpu()  # [rows, d]
    weight = u.head.weight.detach().float().cpu()  # [vocab, d]
    d = weight[target]  # [rows, d]
    has_foil = torch.tensor([f is not None for f in foil])
    foil_ids = [f if f is not None else 0 for f in foil]
    d = d - weight[foil_ids] * has_foil[:, None]
    vec = _gain(u, x) * d / scale(u, x)  # [rows, d]
    if u.centre:
        vec = vec - vec.mean(-1, keepdim=True)
    const = torch.zeros(len(target))
    beta = getattr(u.norm, "bias", None)
    if beta is not None:
        const = const + d @ beta.detach().float().cpu()
    bias = getattr(u.head, "bias", None)
    if bias is not None:
        b = bias.detach().float().cpu()
        const = const + b[target] - b[foil_ids] * has_foil
    return vec, const
