"""Hand computations for the readout tests: final norms, unembedding and module paths, written
from the architectures' definitions (no ivx code), and a runner for readout configs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml

from ivx.recipes import run as experiment

# architecture → final norm module, LayerNorm? (else RMSNorm), block path, per-head value input
# module; gain: "γ" (weight), "1+γ" (Gemma), "1" (OLMo: no weight, no bias); eps where hard-coded
_LLAMA_LIKE = {"norm": "model.norm", "ln": False, "block": "model.layers.{}", "z": "self_attn.o_proj"}
ARCHS: dict[str, dict[str, Any]] = {
    "gpt2": {"norm": "transformer.ln_f", "ln": True, "block": "transformer.h.{}", "z": "attn.c_proj"},
    "llama": _LLAMA_LIKE,
    "gpt_neox": {
        "norm": "gpt_neox.final_layer_norm",
        "ln": True,
        "block": "gpt_neox.layers.{}",
        "z": "attention.dense",
    },
    "gemma": {**_LLAMA_LIKE, "gain": "1+γ"},
    "olmo": {**_LLAMA_LIKE, "ln": True, "gain": "1", "eps": 1e-5},
}
GEMMA2 = {**_LLAMA_LIKE, "gain": "1+γ"}  # lens only: DLA refuses its post-norms and soft-cap
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


def _spec(arch: str) -> dict[str, Any]:
    return GEMMA2 if arch == "gemma2" else ARCHS[arch]


def gain(arch: str, model: Any) -> torch.Tensor | float:
    """The final norm's gain: γ, 1 + γ (Gemma) or 1 (no weight)."""
    norm = model.get_submodule(_spec(arch)["norm"])
    kind = _spec(arch).get("gain", "γ")
    return 1.0 if kind == "1" else (1 + norm.weight if kind == "1+γ" else norm.weight)


def frozen_scale(arch: str, model: Any, x: torch.Tensor) -> torch.Tensor:
    """The final norm's divisor at residual `x` `[..., 1]` (what DLA freezes)."""
    spec = _spec(arch)
    norm = model.get_submodule(spec["norm"])
    eps = spec.get("eps") or getattr(norm, "eps", None) or norm.variance_epsilon
    centred = x - x.mean(-1, keepdim=True) if spec["ln"] else x
    return (centred.pow(2).mean(-1, keepdim=True) + eps).sqrt()


def hand_norm(arch: str, model: Any, x: torch.Tensor) -> torch.Tensor:
    """The final norm, written out: LayerNorm (centre, divide by std, gain, β) or RMSNorm (divide by
    rms, gain)."""
    norm = model.get_submodule(_spec(arch)["norm"])
    centred = x - x.mean(-1, keepdim=True) if _spec(arch)["ln"] else x
    out = centred / frozen_scale(arch, model, x) * gain(arch, model)
    return out + norm.bias if getattr(norm, "bias", None) is not None else out


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
