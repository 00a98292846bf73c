"""The SAE edit function on tensors: exact no-op, `top`, `drop`, and the change (f' − f) @ W_dec."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ivx.engine import sae as sae_edits
from ivx.model import sae as saes
from ivx.plan.edits import Edit


def _edit(kind: str, **kw) -> Edit:
    base = dict(
        index=0,
        name="f",
        kind=kind,
        component="block_output",
        layer=0,
        positions=(0,),
        source="none",
        source_positions=(),
        heads=None,
        subspace=None,
        value=None,
        coefficient=1.0,
        vector=None,
        sae="s",
    )
    return Edit(**{**base, **kw})


@pytest.mark.parametrize("arch", ["standard", "jumprelu", "topk", "gated"])
def test_unchanged_features_leave_the_activation_bit_equal(arch: str) -> None:
    sae = saes.random_sae(arch, d_in=16, d_sae=40, seed=1)
    x = torch.randn(7, 16, generator=torch.Generator().manual_seed(0)) * 4
    for edit in (
        _edit("scale", value=1.0),
        _edit("vanilla", features=(3, 5)),
        _edit("addition", coefficient=0.0),
    ):
        out = sae_edits.edit_fn(sae, edit)(x, x.clone())
        assert torch.equal(out, x), edit.kind


def test_top_zeroes_each_positions_most_active_features() -> None:
    sae = saes.random_sae("standard", d_in=16, d_sae=40, seed=4)
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(1))
    f = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    f_new = f.clone()
    for i in range(5):
        f_new[i, f[i].argsort(descending=True)[:3]] = 0.0
    want = x + (f_new - f) @ sae.W_dec
    got = sae_edits.edit_fn(sae, _edit("zero", top=3))(x, None)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    read = sae_edits.reader(sae, _edit("collect", top=3))(x)
    assert int((read != 0).sum()) <= 15 and torch.equal(read, f - f_new)


def test_drop_replaces_by_the_reconstruction_and_keep_adds_the_error() -> None:
    sae = dataclasses.replace(
        saes.random_sae("topk", d_in=16, d_sae=40, k=5), normalize_activations="layer_norm"
    )
    x = torch.randn(6, 16) * 3 + 1
    f = sae.encode(x)
    dropped = sae_edits.edit_fn(sae, _edit("scale", value=1.0, sae_error="drop"))(x, None)
    torch.testing.assert_close(dropped, sae.decode(f, like=x))
    kept = sae_edits.edit_fn(sae, _edit("set", value=2.0, features=(1,)))(x, None)
    f_new = f.clone()
    f_new[:, 1] = 2.0
    torch.testing.assert_close(
        kept, sae.decode(f_new, like=x) + (x - sae.decode(f, like=x)), rtol=1e-5, atol=1e-5
    )
