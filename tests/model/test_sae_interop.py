"""Interop with the sae-lens package (optional, skipped without it): SAEs built and saved by sae-lens load
in ivx and encode / decode the same activations to 1e-5, and an SAE trained by `ivx sae train` loads
in sae-lens with the same features. sae-lens is not an ivx dependency; run this in an environment
that has it (see docs/sae_training.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ivx.methods import sae_train as T
from ivx.model import sae as saes

sae_lens = pytest.importorskip(
    "sae_lens", reason="sae-lens is not installed (optional interop test: pip install sae-lens)"
)

D_IN, D_SAE = 16, 48


def _randomised(sae: object, seed: int) -> None:
    """Every parameter of a sae-lens SAE drawn at random (biases and thresholds too)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sae.named_parameters():  # type: ignore[attr-defined]
            value = torch.randn(param.shape, generator=gen) * 0.5
            param.copy_(value.abs() * 0.2 if name == "threshold" else value)


def _build(architecture: str) -> object:
    from sae_lens.saes.sae import SAEMetadata

    meta = SAEMetadata(hook_name="blocks.1.hook_resid_post")
    if architecture == "topk":
        return sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=5, metadata=meta))
    if architecture == "jumprelu":
        return sae_lens.JumpReLUSAE(sae_lens.JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE, metadata=meta))
    if architecture == "gated":
        return sae_lens.GatedSAE(sae_lens.GatedSAEConfig(d_in=D_IN, d_sae=D_SAE, metadata=meta))
    return sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, metadata=meta))


@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu", "gated"])
def test_sae_lens_saes_load_in_ivx_and_agree(architecture: str, tmp_path: Path) -> None:
    theirs = _build(architecture)
    _randomised(theirs, seed=len(architecture))
    theirs.save_model(tmp_path)  # type: ignore[attr-defined]
    ours = saes.load(tmp_path)
    assert (ours.architecture, ours.d_in, ours.d_sae) == (architecture, D_IN, D_SAE)
    assert ours.site() == ("block_output", 1)
    x = torch.randn(20, D_IN, generator=torch.Generator().manual_seed(7)) * 2  # [20, d_in]
    with torch.no_grad():
        their_f = theirs.encode(x)  # type: ignore[attr-defined]
        their_x = theirs.decode(their_f)  # type: ignore[attr-defined]
    our_f = ours.encode(x)
    assert (their_f > 0).sum() > 0  # the comparison is not between two zero tensors
    assert torch.allclose(our_f, their_f, atol=1e-5)
    assert torch.allclose(ours.decode(our_f), their_x, atol=1e-5)


def test_an_ivx_trained_sae_loads_in_sae_lens(tmp_path: Path) -> None:
    plan = T.Plan("topk", D_IN, D_SAE, 4, 8, 1 / 32, 1.0, 30, 32, 3e-3, 0, 0.2, 5, None, 0)
    acts = torch.randn(256, D_IN, generator=torch.Generator().manual_seed(2)) + 1.0  # [256, d_in]
    state = T.start(plan, acts.mean(0))
    for _ in range(plan.steps):
        T.train_step(state, acts, plan)

    sae = T.to_sae(T.folded(state.params, 1.0), plan, "blocks.1.hook_resid_post", 1, {"model_name": "tiny"})
    saes.save(sae, tmp_path)
    theirs = sae_lens.SAE.load_from_disk(tmp_path)
    assert theirs.cfg.architecture() == "topk" and theirs.cfg.k == 4
    assert theirs.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    with torch.no_grad():
        their_f = theirs.encode(acts)
    ours = T.activate(T.pre_acts(state.params, acts), plan)
    assert torch.allclose(their_f, ours, atol=1e-5)
    assert torch.allclose(theirs.decode(their_f), T.decode(state.params, ours), atol=1e-5)
