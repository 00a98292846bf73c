"""What `ivx sae train` writes beside the weights: the model card, the training curves, the summary line.

The model card (README.md, with Hugging Face front matter) says where the SAE reads, what it was
trained on, how, and how well it reconstructs held-out activations: MSE, the fraction of
variance explained (FVE), L0 (latents active per token) and the fraction of latents that never
fire. The curves are the logged loss, reconstruction MSE, L0 and dead fraction per step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CURVES = ("loss", "mse", "l0", "dead_fraction")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def model_card(info: dict[str, Any]) -> str:
    """README.md of a trained SAE from its training record (`training.json`'s content)."""
    plan, final, data = info["plan"], info["final"], info["data"]
    site = info["site"]
    arch = plan["architecture"] + (f" (k = {plan['k']})" if plan.get("k") else "")
    if plan["architecture"] == "standard":
        every = plan["resample_every"]
        sparsity = f"L1 coefficient {plan['l1_coefficient']:g}, dead latents resampled every {every} steps"
    else:
        aux = f"aux_k {plan['aux_k']}, coefficient {plan['aux_coefficient']:g}"
        sparsity = f"auxiliary loss on dead latents ({aux})"
    rows = [
        ("reconstruction MSE (per element)", final["mse"]),
        ("fraction of variance explained", final["fve"]),
        ("L0 (latents active per token)", final["l0"]),
        ("dead fraction (never active on held-out)", final["dead_fraction"]),
    ]
    table = "\n".join(f"| {name} | {_fmt(value)} |" for name, value in rows)
    return f"""---
library_name: ivx
tags: [sparse-autoencoder, sae, interpretability, ivx]
---
# Sparse autoencoder: {info["model"]} {site["hook_name"]}

A {arch} sparse autoencoder with {plan["d_sae"]} latents on the activations of `{info["model"]}`
at `{site["hook_name"]}` (ivx: `{site["component"]}` layer {site["layer"]}, width {plan["d_in"]}).
Files in SAELens's layout: `cfg.json` + `sae_weights.safetensors`; use it in ivx with
`sae: <this directory or hf://user/name>` on an intervention, or with the sae-lens package.

## Data
{data["prompts"]} prompts from `{data["source"]}`, every token position: {data["tokens"]} activations
({data["train_tokens"]} for training, {data["held_out_tokens"]} held out, seed {plan["seed"]}).
Activations were scaled by {data["scale"]:.6g} (mean norm sqrt(d_in)) while training; the scale
is folded into the saved weights, which read the raw activations.

## Training
{plan["steps"]} steps of {plan["batch_size"]} activations, Adam lr {plan["lr"]:g}
(warm-up {plan["warmup_steps"]} steps, linear decay over the last {plan["decay_fraction"]:g}),
decoder rows at unit norm; {sparsity}. Trained in {info["seconds"]:.1f} s.

## Held-out evaluation
| metric | value |
|---|---|
{table}

Reproduce: `{info["command"]}`
"""


def curves(history: list[dict[str, Any]], path: Path) -> Path:
    """The training curves (loss, MSE, L0, dead fraction per step) as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVES), figsize=(3.2 * len(CURVES), 2.8))
    steps = [h["step"] for h in history]
    for ax, key in zip(axes, CURVES, strict=True):
        ax.plot(steps, [h.get(key, float("nan")) for h in history], linewidth=1)
        ax.set_title(key.replace("_", " "))
        ax.set_xlabel("step")
        if key in ("loss", "mse") and all(h.get(key, 0) > 0 for h in history):
            ax.set_yscale("log")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def summary_line(final: dict[str, Any]) -> str:
    """One terminal line: held-out MSE, FVE, L0 and dead fraction."""
    return (
        f"held-out: MSE {final['mse']:.4g}, FVE {final['fve']:.3f}, L0 {final['l0']:.1f}, "
        f"dead {final['dead_fraction']:.1%}"
    )
