"""How well each SAE explains its site on the run's prompts: summary.json's `saes` section.

Per SAE site (an SAE at a component and layer that some intervention edits), over every token of
the run's clean base prompts (a prompt's BOS token left out, as its activation is an outlier the
SAE is rarely trained on): the reconstruction MSE (mean over tokens and dimensions of
(x − decode(encode(x)))²), the fraction of variance explained (1 − Σ‖x − x̂‖² / Σ‖x − x̄‖², x̄ the
mean activation), the mean L0 (active features per token) and the dead features (never active on
these tokens). When the SAE explains less than half of the variance, a warning says that effects
measured through its features say little about the model (the error term carries the rest).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ivx.engine import baselines
from ivx.engine import sae as sae_edits
from ivx.model.sae import SAE

if TYPE_CHECKING:
    import torch

    from ivx.engine.executor import Executor
    from ivx.plan.prepared import Prepared

POOR_FVE = 0.5  # below this, effects through the SAE say little about the model


def stats(sae: SAE, acts: torch.Tensor) -> dict[str, Any]:
    """MSE, FVE, mean L0 and dead features of `sae` on activations [n_tokens, d_in]."""
    import torch

    x = acts.to(sae.W_enc.dtype)  # [n, d_in]
    f = sae.encode(x)  # [n, d_sae]
    err = x - sae.decode(f, like=x)  # [n, d_in]
    total = ((x - x.mean(0)) ** 2).sum()
    active = f != 0  # [n, d_sae]
    dead = int((~active.any(0)).sum())
    return {
        "tokens": int(x.shape[0]),
        "mse": float((err**2).mean()),
        "fve": float(1 - (err**2).sum() / total) if float(total) > 0 else float("nan"),
        "l0": float(active.sum(-1, dtype=torch.float64).mean()),
        "dead": dead,
        "dead_fraction": dead / sae.d_sae,
    }


def _sites(prep: Prepared) -> dict[tuple[str, str, int], list[str]]:
    """(SAE reference, component, layer) → the names of the interventions using it there."""
    out: dict[tuple[str, str, int], list[str]] = {}
    for cell in prep.plan.cells:
        for e in cell.edits:
            if e.sae is not None:
                names = out.setdefault((e.sae, e.component, e.layer), [])
                if e.name not in names:
                    names.append(e.name)
    return out


def section(prep: Prepared, executor: Executor) -> tuple[list[dict[str, Any]], list[str]]:
    """summary.json's `saes` entries (one per SAE site) and their warnings ([] without SAEs)."""
    import torch

    sites = _sites(prep)
    if not sites:
        return [], []
    work = executor.engine.work
    wanted = {(component, layer) for _, component, layer in sites}
    ids = {p.index: p.base_ids for p in work.prompts.values()}
    _, acts = baselines.capture(work, ids, wanted)  # [seq, d] per site and prompt
    entries, warnings = [], []
    for (ref, component, layer), names in sites.items():
        sae = sae_edits.load(ref, prep.cfg.path.parent, work.lm.device)
        per_prompt = [
            a[1:] if work.prompts[p].bos else a for p, a in sorted(acts[(component, layer)].items())
        ]
        found = stats(sae, torch.cat(per_prompt))
        entry = {
            "sae": ref,
            "interventions": names,
            "component": component,
            "layer": layer,
            "hook_name": sae.hook_name,
            "architecture": sae.architecture,
            "d_in": sae.d_in,
            "d_sae": sae.d_sae,
            **found,
        }
        entries.append(entry)
        if not found["fve"] >= POOR_FVE:
            warnings.append(
                f"SAE {ref} at {component} layer {layer} explains {found['fve']:.0%} of the activation's "
                f"variance on these prompts (< {POOR_FVE:.0%}): effects through this SAE say little "
                "about the model (its error term carries the rest)"
            )
    return entries, warnings


def text(summary: dict[str, Any]) -> list[str]:
    """Terminal lines: each SAE site's reconstruction quality."""
    return [
        f"sae {', '.join(e['interventions'])} ({e['architecture']}, {e['d_sae']} features) at "
        f"{e['component']} layer {e['layer']}: FVE {e['fve']:.3f}, MSE {e['mse']:.3g}, "
        f"L0 {e['l0']:.1f}, dead {e['dead']}/{e['d_sae']} over {e['tokens']} tokens"
        for e in summary.get("saes") or []
    ]
