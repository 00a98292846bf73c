"""Direct logit attribution: each head's and MLP's direct contribution to the answer's logit.

The final residual at the last position is a sum of parts — the embeddings (`block_input.0`),
every attention head's output (its slice of the output projection's input times that slice of
`W_O`), each layer's attention output bias, and every MLP output — so with the final norm's scale
frozen at this run's final residual (`unembed`: TransformerLens' `apply_ln_to_stack`), the
target − foil logit difference (the target logit without a foil) is exactly the sum of each part's
contribution plus the constant of the final norm's and unembedding's biases (`dla_bias`)
(Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits"; Wang et al. 2022, IOI).
Per head the output is `o_proj(z masked to the head) − o_proj(0)`, the projection's own (linear)
map, so fused, Conv1D and GQA layouts need no weight slicing. Contributions are averaged over
noise samples; `dla_total` (their sum) and `dla_logit` (the model's own difference) agree to float
rounding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ivx.methods import unembed
from ivx.methods.unembed import Unembed

if TYPE_CHECKING:
    import torch

    from ivx.engine.executor import Executor
    from ivx.model.components import Site
    from ivx.plan.grid import Cell

COMPONENTS: tuple[str, ...] = ("head_attention_value_output", "mlp_output", "block_input", "block_output")


def sites(executor: Executor) -> list[Site]:
    """The sites DLA reads: per layer the heads' values and the MLP output; embeddings; final residual."""
    n = executor.lm.info.n_layers
    per_layer = [
        executor.site(c, layer) for layer in range(n) for c in ("head_attention_value_output", "mlp_output")
    ]
    return per_layer + [executor.site("block_input", 0), executor.site("block_output", n - 1)]


def _heads(
    o_proj: Any, z: torch.Tensor, n_heads: int, vec: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-head contributions `[rows, heads]`, the output bias's contribution `[rows]`) of one layer."""
    import torch

    rows, width = z.shape  # [rows, n_heads * head_dim]
    mask = torch.zeros(n_heads, width, dtype=z.dtype, device=z.device)
    for h in range(n_heads):
        mask[h, h * (width // n_heads) : (h + 1) * (width // n_heads)] = 1
    zero = o_proj(torch.zeros(1, width, dtype=z.dtype, device=z.device)).float().cpu()  # [1, d]
    per_head = o_proj(z[:, None, :] * mask[None]).float().cpu() - zero  # [rows, heads, d]
    return torch.einsum("rhd,rd->rh", per_head, vec), zero[0] @ vec.T


def extras(
    executor: Executor, u: Unembed, store: dict[Site, torch.Tensor], chunk: list[Cell], logits: torch.Tensor
) -> dict[int, dict[str, Any]]:
    """Per cell of one prompt's chunk, the direct contributions at the last position (sample means)."""
    import torch

    lm, S = executor.lm, executor.samples
    n = lm.info.n_layers
    p = executor.prompts[chunk[0].prompt]
    assert p.target_id is not None  # readouts.check: every record has a target
    rows = len(chunk) * S
    final = store[executor.site("block_output", n - 1)][:, -1]  # [rows, d]
    vec, const = unembed.directions(u, final, [p.target_id] * rows, [p.foil_id] * rows)
    heads, attn_bias, mlp = [], [], []
    for layer in range(n):
        site = executor.site("head_attention_value_output", layer)
        z = store[site][:, -1]  # [rows, n_heads * head_dim]
        per_head, bias = _heads(lm.model.get_submodule(site.module), z, site.n_heads, vec)
        heads.append(per_head)
        attn_bias.append(bias)
        mlp.append((store[executor.site("mlp_output", layer)][:, -1].float().cpu() * vec).sum(-1))
    embed = (store[executor.site("block_input", 0)][:, -1].float().cpu() * vec).sum(-1)  # [rows]
    head_t = torch.stack(heads, 1)  # [rows, layers, heads]
    attn_t, mlp_t = torch.stack(attn_bias, 1), torch.stack(mlp, 1)  # [rows, layers]
    total = head_t.sum((1, 2)) + mlp_t.sum(1) + attn_t.sum(1) + embed + const  # [rows]
    last = logits.float().cpu()  # [rows, vocab]
    actual = last[:, p.target_id] - (last[:, p.foil_id] if p.foil_id is not None else 0.0)

    def mean(t: torch.Tensor, i: int) -> Any:
        return t.view(len(chunk), S, *t.shape[1:])[i].mean(0).tolist()

    return {
        cell.index: {
            "dla_direction": "target - foil" if p.foil_id is not None else "target",
            "dla_heads": mean(head_t, i),
            "dla_mlp": mean(mlp_t, i),
            "dla_attn_bias": mean(attn_t, i),
            "dla_embed": mean(embed, i),
            "dla_bias": mean(const, i),
            "dla_total": mean(total, i),
            "dla_logit": mean(actual, i),
        }
        for i, cell in enumerate(chunk)
    }
