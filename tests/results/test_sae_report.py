"""The SAE report's numbers against hand computations on SAEs whose quality is known."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ivx.model import sae as saes
from ivx.results import sae as report


def _mirror(d: int) -> saes.SAE:
    """relu(x) − relu(−x) = x: a 2d-feature ReLU SAE that reconstructs every activation exactly."""
    eye = torch.eye(d)
    base = saes.random_sae("standard", d_in=d, d_sae=2 * d)
    return dataclasses.replace(
        base,
        W_enc=torch.cat([eye, -eye], 1),
        b_enc=torch.zeros(2 * d),
        W_dec=torch.cat([eye, -eye], 0),
        b_dec=torch.zeros(d),
    )


def test_perfect_sae_explains_everything() -> None:
    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(0))
    x[:, 5] = x[:, 5].abs()  # feature 11 (−x₅) never fires: one dead feature
    got = report.stats(_mirror(6), x)
    assert got["mse"] == pytest.approx(0.0, abs=1e-12) and got["fve"] == pytest.approx(1.0)
    assert got["l0"] == pytest.approx(float((x != 0).sum(-1).float().mean()))  # one of ±x_i per dim
    assert (got["dead"], got["tokens"]) == (1, 50)
    assert got["dead_fraction"] == pytest.approx(1 / 12)


def test_zero_decoder_explains_nothing_beyond_the_bias() -> None:
    x = torch.randn(40, 4, generator=torch.Generator().manual_seed(1)) + 3.0
    sae = dataclasses.replace(_mirror(4), W_dec=torch.zeros(8, 4), b_dec=x.mean(0))
    got = report.stats(sae, x)  # the reconstruction is the mean: FVE exactly 0
    assert got["fve"] == pytest.approx(0.0, abs=1e-6)
    assert got["mse"] == pytest.approx(float(((x - x.mean(0)) ** 2).mean()), rel=1e-6)


def test_text_lines() -> None:
    entry = {
        "interventions": ["f"],
        "architecture": "topk",
        "d_sae": 64,
        "component": "block_output",
        "layer": 2,
        "fve": 0.91234,
        "mse": 0.0123,
        "l0": 8.0,
        "dead": 3,
        "tokens": 40,
    }
    (line,) = report.text({"saes": [entry]})
    assert "FVE 0.912" in line and "dead 3/64" in line and "block_output layer 2" in line
