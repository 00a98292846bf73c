"""A pyvene-saved intervention directory loads into ivx and reproduces the same intervention."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ivx.engine import das
from ivx.model import loading as models
from ivx.store import bundle

BASE = "When Mary and John went to the store , John gave a drink to"
SOURCE = "When Mary and John went to the store , Mary gave a drink to"


def write_fixture(directory: Path, basis: torch.Tensor) -> None:
    """pyvene's on-disk layout, written with plain torch.save (for machines without pyvene)."""
    directory.mkdir()
    key = "layer_1_comp_block_output_unit_pos_nunit_1#0"
    config = {
        "model_type": "<class 'transformers.models.gpt2.modeling_gpt2.GPT2LMHeadModel'>",
        "representations": [
            {
                "layer": 1,
                "component": "block_output",
                "unit": "pos",
                "max_number_of_units": 1,
                "low_rank_dimension": basis.shape[1],
            }
        ],
        "intervention_types": ["<class 'pyvene.models.interventions.LowRankRotatedSpaceIntervention'>"],
        "sorted_keys": [key],
        "intervention_dimensions": [basis.shape[0]],
    }
    (directory / "config.json").write_text(json.dumps(config))
    torch.save({"rotate_layer.weight": basis}, directory / f"intkey_{key}.bin")


def test_pyvene_directory_maps_to_the_same_intervention(tiny_model_dir, tmp_path: Path) -> None:
    lm = models.load(str(tiny_model_dir("gpt2")))
    d = lm.info.d_model
    q, _ = torch.linalg.qr(torch.randn(d, 3, generator=torch.Generator().manual_seed(0)))
    try:
        import pyvene as pv

        config = pv.IntervenableConfig(
            [
                {
                    "layer": 1,
                    "component": "block_output",
                    "low_rank_dimension": 3,
                    "intervention_type": pv.LowRankRotatedSpaceIntervention,
                }
            ]
        )
        wrapped = pv.IntervenableModel(config, lm.model)
        wrapped.save(str(tmp_path / "pv"))
        intervention = next(iter(wrapped.interventions.values()))
        expected = intervention.rotate_layer.weight.detach().clone()
        ids = {
            t: torch.tensor([lm.tokenizer(t, add_special_tokens=False)["input_ids"]]) for t in (BASE, SOURCE)
        }
        with torch.no_grad():
            _, out = wrapped({"input_ids": ids[BASE]}, [{"input_ids": ids[SOURCE]}], {"sources->base": 9})
        pyvene_logits = out.logits[0]  # every position: the edit is in the last block
    except ImportError:
        write_fixture(tmp_path / "pv", q)
        expected, pyvene_logits = q, None
    interventions, tensors = bundle.from_pyvene(tmp_path / "pv")
    (iv,) = interventions
    assert iv["kind"] == "low_rank_rotated_space" and iv["layer"] == 1 and iv["low_rank_dimension"] == 3
    torch.testing.assert_close(tensors["pv0.basis"], expected)
    # the same edit, applied by ivx's frozen edit function at (layer 1, position 9)
    fn = das.edit_fn(iv["kind"], {"basis": tensors["pv0.basis"]})
    store = {}
    block = lm.model.transformer.h[1]
    handle = block.register_forward_hook(lambda m, a, o: store.__setitem__("src", o.clone()))
    with torch.no_grad():
        lm.model(torch.tensor([lm.tokenizer(SOURCE, add_special_tokens=False)["input_ids"]]))
    handle.remove()

    def hook(m, a, o):
        o = o.clone()
        o[0, 9] = fn(o[0, 9:10], store["src"][0, 9:10])[0]
        return o

    handle = block.register_forward_hook(hook)
    with torch.no_grad():
        ivx_logits = lm.model(
            torch.tensor([lm.tokenizer(BASE, add_special_tokens=False)["input_ids"]])
        ).logits[0]
    handle.remove()
    if pyvene_logits is not None:
        torch.testing.assert_close(ivx_logits, pyvene_logits, atol=1e-5, rtol=1e-5)
    # with or without pyvene: its LowRankRotatedSpaceIntervention written out, base + ((source − base) R) Rᵀ
    basis = tensors["pv0.basis"]

    def by_hand(m, a, o):
        o = o.clone()
        o[0, 9] = o[0, 9] + ((store["src"][0, 9] - o[0, 9]) @ basis) @ basis.T
        return o

    base_ids = torch.tensor([lm.tokenizer(BASE, add_special_tokens=False)["input_ids"]])
    handle = block.register_forward_hook(by_hand)
    try:
        with torch.no_grad():
            hand_logits = lm.model(base_ids).logits[0]
    finally:
        handle.remove()
    with torch.no_grad():
        plain_logits = lm.model(base_ids).logits[0]
    torch.testing.assert_close(ivx_logits, hand_logits, atol=1e-5, rtol=1e-5)
    # the edit does something, at its own position only: block 1 is the last block, so no later
    # position sees it (comparing last-position logits alone would compare nothing)
    moved = (ivx_logits - plain_logits).abs().amax(-1)  # [pos]
    assert moved[9] > 1e-3 and float(moved[torch.arange(len(moved)) != 9].max()) < 1e-6
    # and it round-trips into an ivx bundle
    bundle.save(tmp_path / "b", interventions, tensors, {"name": "tiny", "d_model": d, "n_layers": 2})
    assert torch.equal(bundle.load(tmp_path / "b").tensors["pv0.basis"], tensors["pv0.basis"])


def test_unsupported_pyvene_types_are_named(tmp_path: Path) -> None:
    (tmp_path / "pv").mkdir()
    (tmp_path / "pv" / "config.json").write_text(
        json.dumps(
            {
                "representations": [{"layer": 0, "component": "block_output"}],
                "intervention_types": ["<class 'pyvene.models.interventions.AutoencoderIntervention'>"],
            }
        )
    )
    with pytest.raises(
        bundle.BundleError, match="cannot map pyvene intervention type\\(s\\) AutoencoderIntervention"
    ):
        bundle.from_pyvene(tmp_path / "pv")
