"""Direct logit attribution: each head's and MLP's direct contribution to the answer's logit.

The final residual at the last position is a sum of parts — the embeddings (`block_input.0`),
every attention head's output (its slice of the output projection's input times that slice of
`W_O`), each layer's attention output bias, and every MLP output — so with the final norm's scale
frozen at this run's final residual (`unembed`: TransformerLens' `apply_ln_to_stack`), the
target − foil logit difference (the target logit without a foil) is exactly the sum of each part's
contribution plus the constant of the final norm's and unembedding's biases (`dla_bias`)
(Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits"; Wang et al. 2022, IOI).
Per head the output is `o_proj(z masked to the head) − o_proj(0)`, the projection's own (linear)
map, so fused, Conv1D and GQA layouts need no weight slicing. Where blocks norm the attention and
MLP outputs before adding them (Gemma 2/3, OLMo 2: `norms.FAMILIES` names those norms), each of
those norms is linearised the same way, its scale frozen at the sublayer's whole output in this run,
so the heads' parts still sum to what the block adds. A soft-capped model is refused (`refusal`).
Contributions are averaged over noise samples; `dla_total` (their sum) and `dla_logit` (the model's
own difference) agree to float rounding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ivx.methods import norms, unembed
from ivx.methods.unembed import Unembed
from ivx.model import layouts

if TYPE_CHECKING:
    import torch

    from ivx.engine.executor import Executor
    from ivx.model.components import Site
    from ivx.plan.grid import Cell

COMPONENTS: tuple[str, ...] = ("head_attention_value_output", "mlp_output", "block_input", "block_output")


def refusal(softcap: float | None) -> list[str]:
    """Why DLA's sum of parts would not be exact for this model (empty: it is)."""
    if softcap is None:
        return []
    return [
        f"dla linearises the final norm, but this model soft-caps its logits ({softcap:g}·tanh(logits/"
        f"{softcap:g})), which no frozen scale makes linear (use readout: logit_lens)"
    ]


def sites(executor: Executor) -> list[Site]:
    """The sites DLA reads: per layer the heads' values and the MLP output; embeddings; final residual."""
    n = executor.lm.info.n_layers
    per_layer = [
        executor.site(c, layer) for layer in range(n) for c in ("head_attention_value_output", "mlp_output")
    ]
    return per_layer + [executor.site("block_input", 0), executor.site("block_output", n - 1)]


def _heads(o_proj: Any, z: torch.Tensor, n_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(each head's output `[rows, heads, d]`, the output projection's bias `[1, d]`) of one layer:
    `o_proj(z masked to the head) − o_proj(0)` and `o_proj(0)`, which sum to `o_proj(z)`."""
    import torch

    rows, width = z.shape  # [rows, n_heads * head_dim]
    mask = torch.zeros(n_heads, width, dtype=z.dtype, device=z.device)
    for h in range(n_heads):
        mask[h, h * (width // n_heads) : (h + 1) * (width // n_heads)] = 1
    zero = o_proj(torch.zeros(1, width, dtype=z.dtype, device=z.device)).float().cpu()  # [1, d]
    return o_proj(z[:, None, :] * mask[None]).float().cpu() - zero, zero


def _post_norm(norm: Any, path: str, total: torch.Tensor) -> Any:
    """A sublayer's post-norm (Gemma 2/3, OLMo 2) as a linear map of the sublayer's parts, its scale
    frozen at their sum `total` `[rows, d]`: part `[rows, …, d]` → `g ⊙ (part − c·mean) / s`; plus
    the norm's bias `[d]` (zeros without one), which the sum of parts gets once."""
    import torch

    kind, eps = norms.classify(norm, total.shape[-1], path)
    weight, bias = getattr(norm, "weight", None), getattr(norm, "bias", None)
    gain = kind.offset + (weight.detach().float().cpu() if weight is not None else 1.0)
    centred = total - total.mean(-1, keepdim=True) if kind.centre else total
    s = (centred.pow(2).mean(-1, keepdim=True) + eps).sqrt()  # [rows, 1]

    def linear(part: torch.Tensor) -> torch.Tensor:
        part = part - part.mean(-1, keepdim=True) if kind.centre else part
        return gain * part / (s if part.dim() == 2 else s[:, None])

    shift = bias.detach().float().cpu() if bias is not None else torch.zeros(total.shape[-1])
    return linear, shift


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
    family = norms.FAMILIES.get(lm.info.model_type)
    post = family.post_norms if family is not None else ()
    heads, attn_bias, mlp = [], [], []
    for layer in range(n):
        site = executor.site("head_attention_value_output", layer)
        z = store[site][:, -1]  # [rows, n_heads * head_dim]
        per_head, bias = _heads(lm.model.get_submodule(site.module), z, site.n_heads)  # [rows, heads, d]
        bias = bias.expand(rows, -1)  # [rows, d]
        mlp_out = store[executor.site("mlp_output", layer)][:, -1].float().cpu()  # [rows, d]
        if post:  # the residual gets post_norm(attention output) and post_norm(MLP output)
            block = f"{layouts.LAYOUTS[lm.info.model_type].blocks}.{layer}"
            attn_path, mlp_path = (f"{block}.{name}" for name in post)
            linear, shift = _post_norm(lm.model.get_submodule(attn_path), attn_path, per_head.sum(1) + bias)
            per_head, bias = linear(per_head), linear(bias) + shift
            linear, shift = _post_norm(lm.model.get_submodule(mlp_path), mlp_path, mlp_out)
            mlp_out = linear(mlp_out) + shift
        heads.append(torch.einsum("rhd,rd->rh", per_head, vec))
        attn_bias.append((bias * vec).sum(-1))
        mlp.append((mlp_out * vec).sum(-1))
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
