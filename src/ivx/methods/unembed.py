"""The model's final norm and unembedding, applied to any residual and linearised for attribution.

The logit lens (nostalgebraist 2020) reads an intermediate residual `r` with the model's own
modules: `lm_head(final_norm(r))`. Direct logit attribution needs the same map as a *linear*
function of the residual's parts, so the final norm's scale is frozen at the run's final
residual `x` (TransformerLens' `apply_ln_to_stack` convention):

    LayerNorm:  N(x) = γ ⊙ (x − mean(x)) / s + β,   s = sqrt(var(x) + eps)
    RMSNorm:    N(x) = γ ⊙ x / s,                   s = sqrt(mean(x²) + eps)

With `s` fixed, `N(x) = Σ_c L(c) + β` for the parts `c` that sum to `x` (centring is linear), so
each part's contribution to a logit direction `u` (`W_U[target] − W_U[foil]`) is
`L(c) · u = c · (γ ⊙ u / s)`, centred for LayerNorm; the constant `β · u + b_U · (…)` is the
bias term. The parts sum to the model's own logit difference exactly (up to float rounding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ivx.core.errors import UserError

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


class ReadoutError(UserError, ValueError):
    """A model whose final norm or unembedding a readout cannot use."""


@dataclass(frozen=True)
class Unembed:
    """The final norm and unembedding of one model, and how the norm is linearised."""

    norm_path: str
    norm: Any  # the final norm module
    head: Any  # the output embedding (lm_head) module
    centre: bool  # LayerNorm subtracts the mean; RMSNorm does not
    kind: str  # "LayerNorm" | "RMSNorm"

    def logits(self, resid: torch.Tensor) -> torch.Tensor:
        """The model's own final norm and unembedding of a residual `[..., d_model]` → `[..., vocab]`."""
        return self.head(self.norm(resid)).float()

    def describe(self) -> str:
        """One line for summary.json: which norm, and the linearisation used."""
        centred = "centred, " if self.centre else ""
        return (
            f"{self.kind} {self.norm_path}: {centred}scale frozen at the run's final residual "
            "(TransformerLens apply_ln_to_stack)"
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


def of(model: Any) -> Unembed:
    """The Unembed of a loaded (or meta) causal LM; ReadoutError for norms ivx cannot linearise."""
    import torch

    path, norm = find_norm(model)
    head = model.get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        raise ReadoutError(f"readouts need the unembedding matrix; {type(model).__name__} exposes none")
    if isinstance(norm, torch.nn.LayerNorm):
        return Unembed(path, norm, head, True, "LayerNorm")
    name = type(norm).__name__
    if name.endswith("RMSNorm") and not name.startswith("Gemma"):
        return Unembed(path, norm, head, False, "RMSNorm")
    raise ReadoutError(
        f"the final norm {path} is a {name}; readouts linearise torch LayerNorm and (Llama-style) RMSNorm"
    )


def _gain(u: Unembed, like: torch.Tensor) -> torch.Tensor:
    """γ `[d]` (ones without an affine weight)."""
    import torch

    weight = getattr(u.norm, "weight", None)
    return torch.ones(like.shape[-1]) if weight is None else weight.detach().float().cpu()


def _eps(u: Unembed) -> float:
    for name in ("eps", "variance_epsilon"):
        value = getattr(u.norm, name, None)
        if value is not None:
            return float(value)
    raise ReadoutError(f"cannot read the epsilon of the final norm {u.norm_path}")


def scale(u: Unembed, final: torch.Tensor) -> torch.Tensor:
    """The frozen scale `s` `[rows, 1]` of final residuals `[rows, d_model]` (float32)."""
    x = final.float()
    if u.centre:
        x = x - x.mean(-1, keepdim=True)
    return (x.pow(2).mean(-1, keepdim=True) + _eps(u)).sqrt()


def directions(
    u: Unembed, final: torch.Tensor, target: list[int], foil: list[int | None]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the residual-space read-out vector `[rows, d_model]` (γ ⊙ (W_U[t] − W_U[f]) / s,
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
