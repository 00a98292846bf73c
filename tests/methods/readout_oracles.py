"""Hand computations for the readout tests: final norms, unembedding and module paths, written
from the architectures' definitions (no ivx code), and a runner for readout configs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml

from ivx.recipes import run as experiment

# architecture → (final norm module, LayerNorm?, block path, per-head value input module, MLP module)
ARCHS: dict[str, dict[str, Any]] = {
    "gpt2": {"norm": "transformer.ln_f", "ln": True, "block": "transformer.h.{}", "z": "attn.c_proj"},
    "llama": {"norm": "model.norm", "ln": False, "block": "model.layers.{}", "z": "self_attn.o_proj"},
    "gpt_neox": {
        "norm": "gpt_neox.final_layer_norm",
        "ln": True,
        "block": "gpt_neox.layers.{}",
        "z": "attention.dense",
    },
}
PROMPTS = [
    {
        "base": "When Mary and John went to the store , John gave a drink to",
        "target": " Mary",
        "foil": " John",
    },
    {"base": "The Eiffel Tower is in", "target": " Paris", "foil": " Seattle"},
]


def perturb(model: Any, seed: int = 0) -> None:
    """Random norm gains and biases everywhere (init leaves γ = 1, β = 0), so no term is trivially zero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or (("norm" in name or "ln" in name) and param.dim() == 1):
                param.add_(0.3 * torch.randn(param.shape, generator=gen))


def hand_norm(arch: str, model: Any, x: torch.Tensor) -> torch.Tensor:
    """The final norm, written out: LayerNorm (centre, divide by std, γ, β) or RMSNorm (divide by rms, γ)."""
    norm = model.get_submodule(ARCHS[arch]["norm"])
    if ARCHS[arch]["ln"]:
        centred = x - x.mean(-1, keepdim=True)
        return centred / (centred.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt() * norm.weight + norm.bias
    return x / (x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon).sqrt() * norm.weight


def frozen_scale(arch: str, model: Any, x: torch.Tensor) -> torch.Tensor:
    """The final norm's divisor at residual `x` `[..., 1]` (what DLA freezes)."""
    norm = model.get_submodule(ARCHS[arch]["norm"])
    if ARCHS[arch]["ln"]:
        centred = x - x.mean(-1, keepdim=True)
        return (centred.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()
    return (x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon).sqrt()


def unembed(model: Any, x: torch.Tensor) -> torch.Tensor:
    """x @ W_Uᵀ (+ b_U): the unembedding as a matrix product."""
    head = model.get_output_embeddings()
    out = x @ head.weight.T
    return out + head.bias if head.bias is not None else out


def token(lm: Any, text: str) -> int:
    return lm.tokenizer(text, add_special_tokens=False)["input_ids"][0]


def ids_of(lm: Any, text: str) -> torch.Tensor:
    return torch.tensor([lm.tokenizer(text, add_special_tokens=False)["input_ids"]])


def run_readout(
    lm: Any, tmp: Path, readout: str, prompts: list[dict[str, Any]], **extra: Any
) -> tuple[list[dict[str, Any]], dict[str, Any], Path]:
    """Run a readout config on a loaded model: (results rows by cell, summary, run directory)."""
    cfg = {
        "name": readout,
        "model": {"name": str(lm.path), "bos": False},
        "prompts": prompts,
        "readout": readout,
        "metrics": ["logit_diff", "target_prob"] if all("foil" in p for p in prompts) else ["target_prob"],
        "output": {"root": str(tmp), "logits": "none", "plots": False},
        **extra,
    }
    path = tmp / f"{readout}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_dir = experiment.run(path, progress=False, lm=lm)
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    return sorted(rows, key=lambda r: r["cell"]), summary, run_dir
