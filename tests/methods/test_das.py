"""DAS: orthonormal bases, the full-rank oracle, and training that finds the toy world's city variable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ivx.config.loader import load as load_config
from ivx.config.schema import Intervention
from ivx.engine import das
from ivx.methods import iit
from ivx.model import components
from ivx.model import loading as models
from ivx.plan import positions
from ivx.recipes import run as experiment
from ivx.recipes import train
from ivx.store import bundle

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("kind", ["low_rank_rotated_space", "rotated_space"])
def test_basis_stays_orthonormal_while_training(kind: str) -> None:
    torch.manual_seed(0)
    mod = das.module(kind, 16, Intervention(kind=kind, low_rank_dimension=4, interchange_dim=4))
    optim = torch.optim.AdamW(mod.parameters(), lr=0.05)
    base, source, goal = torch.randn(32, 16), torch.randn(32, 16), torch.randn(32, 16)
    for _ in range(50):
        loss = ((mod(base, source) - goal) ** 2).mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
    w = mod.rotate.weight.T
    torch.testing.assert_close(w.T @ w, torch.eye(w.shape[1]), atol=1e-5, rtol=1e-5)
    # the frozen edit function computes the same thing as the module
    torch.testing.assert_close(
        das.edit_fn(kind, mod.params())(base, source), mod(base, source), atol=1e-5, rtol=1e-5
    )


def test_full_rank_das_equals_vanilla_patch(tiny_model_dir, tmp_path: Path) -> None:
    model_dir = tiny_model_dir("gpt2")
    d = models.load(str(model_dir)).info.d_model
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(0)))
    iv = {
        "kind": "low_rank_rotated_space",
        "name": "full",
        "component": "block_output",
        "layer": 0,
        "position": [2, -1],
        "low_rank_dimension": d,
    }
    bundle.save(
        tmp_path / "b", [iv], {"full.basis": q}, {"name": str(model_dir), "d_model": d, "n_layers": 2}
    )
    common = {
        "model": {"name": str(model_dir)},
        "metrics": ["target_prob"],
        "output": {"plots": False},
        "prompts": [
            {
                "base": "When Mary and John went to the store , John gave a drink to",
                "source": "When Mary and John went to the store , Mary gave a drink to",
                "target": " Mary",
            }
        ],
    }
    logits = {}
    for name, ivs in (
        ("das", [{**iv, "bundle": str(tmp_path / "b")}]),
        (
            "vanilla",
            [{k: v for k, v in iv.items() if k not in ("low_rank_dimension",)} | {"kind": "vanilla"}],
        ),
    ):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**common, "name": name, "interventions": ivs}))
        run_dir = experiment.run(path, out_root=str(tmp_path / "runs"), progress=False)
        logits[name] = load_file(str(run_dir / "tensors.safetensors"))["cell0"]
    torch.testing.assert_close(logits["das"], logits["vanilla"], atol=1e-5, rtol=1e-5)


def test_bundle_rejects_other_model_shape(tmp_path: Path) -> None:
    iv = {
        "kind": "low_rank_rotated_space",
        "name": "x",
        "component": "block_output",
        "layer": 0,
        "low_rank_dimension": 2,
    }
    bundle.save(
        tmp_path / "b", [iv], {"x.basis": torch.zeros(8, 2)}, {"name": "m", "d_model": 8, "n_layers": 2}
    )
    with pytest.raises(bundle.BundleError, match="d_model 8"):
        bundle.load(tmp_path / "b", expect={"d_model": 16, "n_layers": 2})
    weights = tmp_path / "b" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x01")
    with pytest.raises(bundle.BundleError, match="hash mismatch for weights.safetensors"):
        bundle.load(tmp_path / "b")
    (tmp_path / "b" / "ivx_bundle.json").write_text(
        '{"format_version": 1, "ivx_version": "0", "interventions": []}'
    )
    with pytest.raises(bundle.BundleError, match=r"ivx_bundle.json: base_model: Field required"):
        bundle.load(tmp_path / "b")


@pytest.mark.parametrize(
    "kind",  # one kind in the fast tier; the other two (5 s each) in the slow tier CI also runs
    [
        "low_rank_rotated_space",
        pytest.param("boundless_das", marks=pytest.mark.slow),
        pytest.param("sigmoid_mask", marks=pytest.mark.slow),
    ],
)
def test_train_finds_the_city_and_the_control_stays_at_chance(kind: str, tmp_path: Path) -> None:
    config = ROOT / "configs" / "das.yaml"
    if kind == "sigmoid_mask":  # a per-dimension mask has no basis size: the config must not set one
        text = config.read_text().replace("data/city_swap.jsonl", str(config.parent / "data/city_swap.jsonl"))
        lines = [line for line in text.splitlines() if "low_rank_dimension" not in line]
        config = tmp_path / "das_mask.yaml"
        config.write_text("\n".join(lines) + "\n")
    run_dir = train.train_run(
        config,
        (
            "sweep.layer=[3]",
            "sweep.position=[0, last]",
            "train.epochs=3",
            "prompts.limit=240",
            f"interventions.0.kind={kind}",
            "train.lr=0.02",
        ),
        str(tmp_path),
        None,
        lambda m: None,
    )
    rows = {r["position"]: r for r in map(json.loads, (run_dir / "results.jsonl").read_text().splitlines())}
    assert rows["last"]["iia"] >= 0.9, rows  # the right site
    assert rows[0]["iia"] <= 0.05, rows  # the wrong site (a token before the subject)
    if kind != "sigmoid_mask":  # an untrained mask already mixes half of every dimension
        assert rows["last"]["control_iia"] <= 0.05, rows  # a random, untrained basis
    assert (run_dir / "plots" / "iia.png").is_file() and (run_dir / "plots" / "training.png").is_file()
    # trained bundle → reload → the same IIA, exactly
    loaded = bundle.load(run_dir / "bundle", expect={"d_model": 128, "n_layers": 4})
    (iv,) = loaded.interventions
    lm = models.load("ivx-toy")
    cfg = load_config(ROOT / "configs" / "das.yaml", ("prompts.limit=240",))
    prompts = positions.tokenize(lm.tokenizer, cfg.records)
    site = components.resolve(lm.model, lm.info, iv["component"], iv["layer"])
    examples = train._examples(lm, cfg, Intervention.model_validate(iv), site, prompts)
    held, _ = train.split(len(prompts), cfg.experiment.train.eval_split, cfg.experiment.seed)
    assert iv["kind"] == kind
    fn = das.edit_fn(iv["kind"], das.load_params("city", str(run_dir / "bundle"), Path(".")))
    assert iit.iia(lm, site, [examples[i] for i in sorted(held)], fn) == rows["last"]["iia"]
