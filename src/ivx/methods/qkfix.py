"""AtP*'s QK fix: patched queries and keys go through the attention softmax exactly.

A query or key changes the output only through the attention pattern A (softmax of q·k/√d per
query position). Near saturation the gradient of A is ~0 and plain attribution patching misses
large effects (Kramár et al. 2024, §3.1.1). The fix recomputes the pattern with the patched
logits and linearises only from the pattern on: with G[s, t] = ∂metric/∂A[s, t] = v[t] · ∂metric/∂z[s]
(z = the head's attention-weighted values, the input of the output projection),

    key at t:    Σ_s Σ_t' (A'_t[s, t'] − A[s, t']) G[s, t']   (column t of every row s ≥ t replaced)
    query at s:  Σ_t' (A'_s[s, t'] − A[s, t']) G[s, t']        (row s recomputed)

Since the attention output is linear in A (values fixed), this is exact up to the attention
output of the patched layer and linear after it. Implemented for the GPT-2 layout (absolute
positions, scale 1/√head_dim, optionally 1/(layer+1)); cells that patch several positions or
heads sum the per-(head, position) terms.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def unsupported(lm: Any) -> str | None:
    """Why the QK fix cannot run on this model (None when it can)."""
    if lm.info.layout != "gpt2":
        return f"qk_fix is implemented for the GPT-2 layout (absolute positions), not {lm.info.layout}"
    if getattr(lm.model.config, "reorder_and_upcast_attn", False):
        return "qk_fix does not model reorder_and_upcast_attn"
    return None


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[..., T, n_heads*hd] → [..., n_heads, T, hd]."""
    *lead, T, d = x.shape
    return x.view(*lead, T, n_heads, d // n_heads).transpose(-3, -2)


def table(
    lm: Any,
    layer: int,
    part: str,  # "q" or "k"
    qkv: torch.Tensor,  # [S, T, 3d] the run's fused projection output
    patched: torch.Tensor,  # [T, d] the source run's queries or keys
    grad_z: torch.Tensor,  # [S, T, d] metric gradient at the output projection's input
) -> torch.Tensor:
    """[S, T, n_heads] estimate of patching the query (or key) of each head at each position."""
    import torch

    nh = lm.info.n_heads
    d = lm.info.d_model
    q, k, v = (_heads(t, nh) for t in qkv.split(d, dim=-1))  # [S, H, T, hd]
    gz = _heads(grad_z, nh)
    scale = q.shape[-1] ** -0.5 if getattr(lm.model.config, "scale_attn_weights", True) else 1.0
    if getattr(lm.model.config, "scale_attn_by_inverse_layer_idx", False):
        scale /= layer + 1
    T = q.shape[-2]
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()  # [s, t]: t visible from s
    neg = torch.finfo(q.dtype).min
    logits = (q @ k.transpose(-1, -2) * scale).masked_fill(~causal, neg)  # [S, H, s, t]
    attn = logits.softmax(-1)
    G = gz @ v.transpose(-1, -2)  # [S, H, s, t] = ∂metric/∂A[s, t]
    new = _heads(patched, nh).unsqueeze(0)  # [1, H, T, hd]
    if part == "q":
        new_attn = (new @ k.transpose(-1, -2) * scale).masked_fill(~causal, neg).softmax(-1)
        return ((new_attn - attn) * G).sum(-1).transpose(1, 2)  # [S, T(s), H]
    cross = (q @ new.transpose(-1, -2) * scale).masked_fill(~causal, neg)  # [S, H, s, t] q_s·k'_t
    top = torch.maximum(logits.amax(-1), cross.amax(-1)).unsqueeze(-1)  # [S, H, s, 1]
    e = (logits - top).exp() * causal
    e_new = (cross - top).exp() * causal
    Z = e.sum(-1, keepdim=True)  # [S, H, s, 1]
    EG = (e * G).sum(-1, keepdim=True)
    Z_new = Z - e + e_new  # [S, H, s, t]: row s with column t replaced
    EG_new = EG - e * G + e_new * G
    change = (EG_new / Z_new - EG / Z) * causal  # only rows s ≥ t see key t
    return change.sum(-2).transpose(1, 2)  # [S, T(t), H]
