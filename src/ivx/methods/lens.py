"""The logit lens: every layer's residual stream read through the final norm and unembedding.

nostalgebraist (2020), "interpreting GPT: the logit lens": decoding the residual stream after
each block with the model's own final norm and unembedding shows at which layer, and at which
token position, the answer becomes readable. The read sites are `block_input.0` (the
embeddings) and `block_output.ℓ` for every layer; the last one read through the final norm is the
model's own output, so the lens's last row equals the run's logits. Per (site, position) a row
holds the target's probability and rank (0 = top token) and the foil's probability when the
record has one, averaged over noise samples; `lens_top` is the most probable token there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ivx.methods.unembed import Unembed

if TYPE_CHECKING:
    import torch

    from ivx.engine.executor import Executor
    from ivx.model.components import Site
    from ivx.plan.grid import Cell


def site_names(n_layers: int) -> list[str]:
    """The lens's read sites in order: the embeddings, then every block's output."""
    return ["block_input.0"] + [f"block_output.{layer}" for layer in range(n_layers)]


def sites(executor: Executor) -> list[Site]:
    """The residual-stream sites the lens reads."""
    n = executor.lm.info.n_layers
    return [executor.site("block_input", 0)] + [executor.site("block_output", layer) for layer in range(n)]


def extras(
    executor: Executor, u: Unembed, store: dict[Site, torch.Tensor], chunk: list[Cell], logits: torch.Tensor
) -> dict[int, dict[str, Any]]:
    """Per cell of one prompt's chunk, the lens's `[site][position]` tables (sample means)."""
    import torch

    S = executor.samples
    p = executor.prompts[chunk[0].prompt]
    target, foil = p.target_id, p.foil_id
    assert target is not None  # readouts.check: every record has a target
    tables: dict[str, list[torch.Tensor]] = {"target_prob": [], "target_rank": [], "foil_prob": []}
    tops: list[torch.Tensor] = []
    for site in sites(executor):
        site_logits = u.logits(store[site])  # [rows, seq, vocab]
        probs = torch.softmax(site_logits, dim=-1)
        shape = (len(chunk), S, *probs.shape[1:])
        tables["target_prob"].append(probs[..., target].view(shape[:3]).mean(1).cpu())  # [cells, seq]
        above = (site_logits > site_logits[..., target : target + 1]).sum(-1).float()  # [rows, seq]
        tables["target_rank"].append(above.view(shape[:3]).mean(1).cpu())
        if foil is not None:
            tables["foil_prob"].append(probs[..., foil].view(shape[:3]).mean(1).cpu())
        tops.append(probs.view(shape).mean(1).argmax(-1).cpu())  # [cells, seq]
    decode = executor.lm.tokenizer.decode
    out: dict[int, dict[str, Any]] = {}
    for i, cell in enumerate(chunk):
        row: dict[str, Any] = {
            f"lens_{name}": [t[i].tolist() for t in per_site] for name, per_site in tables.items() if per_site
        }
        row["lens_top"] = [[decode([int(tok)]) for tok in top[i]] for top in tops]
        out[cell.index] = row
    return out
