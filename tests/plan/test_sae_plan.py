"""SAE sites in configs: placement from the SAE's hook_name, and every problem at its file:line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ivx.core.errors import ConfigError
from ivx.model import sae as saes
from ivx.recipes import prepare


def _config(tmp_path: Path, model_dir: Path, iv: dict, **extra) -> Path:
    data = {
        "name": "s",
        "model": {"name": str(model_dir)},
        "prompts": [{"base": "When Mary and John went to the store", "target": " Mary"}],
        "interventions": [iv],
        "output": {"plots": False},
        **extra,
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def sae_dir(tmp_path: Path) -> Path:
    return saes.save(saes.random_sae(d_in=32, d_sae=40, hook_name="blocks.1.hook_mlp_out"), tmp_path / "sae")


def _problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        prepare.prepare_all(path, (), weights=False, mode="run")
    return [p.format() for p in info.value.problems]


def test_sae_alone_places_the_site(tiny_model_dir, tmp_path: Path, sae_dir: Path) -> None:
    iv = {"kind": "zero", "sae": "mine", "feature": [1, 39], "position": "last"}
    path = _config(tmp_path, tiny_model_dir("gpt2"), iv, saes=[{"name": "mine", "path": "sae"}])
    (prep,) = prepare.prepare_all(path, (), weights=False, mode="run")
    (edit,) = prep.plan.cells[0].edits
    assert (edit.component, edit.layer, edit.sae, edit.features) == ("mlp_output", 1, "sae", (1, 39))


@pytest.mark.parametrize(
    ("extra", "field", "message"),
    [
        ({"component": "block_output"}, "component", "the SAE reads mlp_output"),
        ({"layer": 0}, "layer", "the SAE reads layer 1"),
        ({"feature": 40}, "feature", "feature 40 is out of range: the SAE has 40 features"),
        ({"component": "mlp_activation", "feature": 1}, "component", "the SAE reads mlp_output"),
    ],
)
def test_mismatches_are_located(tiny_model_dir, tmp_path, sae_dir, extra, field, message) -> None:
    iv = {"kind": "zero", "sae": str(sae_dir), "feature": 1, **extra}
    path = _config(tmp_path, tiny_model_dir("gpt2"), iv)
    lines = path.read_text().splitlines()
    found = _problems(path)
    line = next(i + 1 for i, text in enumerate(lines) if text.strip().startswith(f"{field}:"))
    assert any(
        f"exp.yaml:{line}" in p and f"interventions[0].{field}" in p and message in p for p in found
    ), found


def test_width_mismatch_and_unknown_path(tiny_model_dir, tmp_path: Path) -> None:
    wide = saes.save(saes.random_sae(d_in=16, d_sae=8, hook_name="blocks.0.hook_resid_post"), tmp_path / "w")
    found = _problems(
        _config(tmp_path, tiny_model_dir("gpt2"), {"kind": "zero", "sae": str(wide), "feature": 0})
    )
    assert any("interventions[0].sae" in p and "16-wide" in p and "32 dims" in p for p in found), found
    found = _problems(
        _config(tmp_path, tiny_model_dir("gpt2"), {"kind": "zero", "sae": "nowhere", "feature": 0})
    )
    assert any(
        "exp.yaml:" in p and "interventions[0].sae" in p and "'nowhere' not found" in p for p in found
    ), found


@pytest.mark.parametrize(
    ("iv", "field", "message"),
    [
        ({"kind": "zero", "feature": 3}, "feature", "`feature` needs `sae:`"),
        ({"kind": "zero", "sae": "x", "feature": 3, "top": 2}, "top", "not both"),
        ({"kind": "zero", "sae": "x"}, "sae", "name the features"),
        ({"kind": "noise", "sae": "x", "feature": 1}, "sae", "not used by kind 'noise'"),
        ({"kind": "set", "sae": "x", "feature": 1}, "value", "needs `value`"),
        ({"kind": "zero", "sae": "x", "feature": 1, "subspace": [0]}, "subspace", "acts on features"),
        ({"kind": "zero", "sae": "x", "feature": -1}, "feature", "feature index"),
        ({"kind": "set", "vector": "v.pt", "value": 2.0}, "value", "only with `sae:`"),
    ],
)
def test_config_problems(tiny_model_dir, tmp_path: Path, iv: dict, field: str, message: str) -> None:
    found = _problems(_config(tmp_path, tiny_model_dir("gpt2"), iv))
    assert any(f"interventions[0].{field}" in p and message in p for p in found), found


def test_sweep_all_features(tiny_model_dir, tmp_path: Path, sae_dir: Path) -> None:
    iv = {"kind": "zero", "sae": str(sae_dir), "feature": "$f", "position": "$p"}
    path = _config(tmp_path, tiny_model_dir("gpt2"), iv, sweep={"f": "all", "p": [0, -1]})
    (prep,) = prepare.prepare_all(path, (), weights=False, mode="run")
    got = sorted({c.edits[0].features for c in prep.plan.cells})
    assert len(prep.plan.cells) == 80 and got == [(i,) for i in range(40)]


def test_sweep_all_features_of_a_missing_sae_is_a_problem(tiny_model_dir, tmp_path: Path) -> None:
    iv = {"kind": "zero", "sae": "nowhere", "feature": "$f"}
    found = _problems(_config(tmp_path, tiny_model_dir("gpt2"), iv, sweep={"f": "all"}))
    assert any("interventions[0].sae" in p and "'nowhere' not found" in p for p in found), found


def test_bad_weights_are_found_before_anything_runs(tiny_model_dir, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    bad = saes.save(saes.random_sae(d_in=32, d_sae=8, hook_name="blocks.0.hook_resid_post"), tmp_path / "bad")
    tensors = load_file(str(bad / "sae_weights.safetensors"))
    save_file(
        {**tensors, "W_dec": tensors["W_dec"][:, :5].contiguous()}, str(bad / "sae_weights.safetensors")
    )
    found = _problems(_config(tmp_path, tiny_model_dir("gpt2"), {"kind": "zero", "sae": "bad", "feature": 0}))
    assert any("interventions[0].sae" in p and "W_dec: shape [8, 5], expected [8, 32]" in p for p in found), (
        found
    )
