"""The shipped SAE (src/ivx/assets/ivx-toy-sae), its training corpus and command, and the shipped SAE
configs (configs/sae_*.yaml) run offline, checked against hand-written hooks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from ivx.cli.app import app
from ivx.model import loading as models
from ivx.model import sae as saes
from ivx.recipes import sae_train as recipe

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = ROOT / "src" / "ivx" / "assets" / "ivx-toy-sae"
CONFIGS = ROOT / "configs"
runner = CliRunner()


def corpus() -> list[str]:
    """configs/data/sae_corpus.jsonl, rebuilt from the toy world (the command in docs/sae_training.md)."""
    from ivx.toy import world as toy_world

    world = toy_world.build(0)
    passages = toy_world.fact_passages(world, 1200, seed=1)
    return passages + [r["base"] for r in toy_world.fact_prompts(world, "test")]


def test_the_training_corpus_is_the_toy_worlds() -> None:
    lines = (CONFIGS / "data" / "sae_corpus.jsonl").read_text().splitlines()
    assert [json.loads(line)["base"] for line in lines] == corpus()


def test_the_bundled_sae_is_what_the_shipped_config_trains() -> None:
    sae = saes.load(BUNDLED)
    assert (sae.architecture, sae.d_in, sae.d_sae, sae.k) == ("topk", 128, 1024, 16)
    assert sae.site() == ("block_output", 2) and sae.hook_name == "blocks.2.hook_resid_post"
    assert sum(f.stat().st_size for f in BUNDLED.iterdir()) < 2 * 2**20
    record = json.loads((BUNDLED / "training.json").read_text())
    assert record["command"] == "ivx sae train configs/sae_train.yaml"
    prep = recipe.prepare(CONFIGS / "sae_train.yaml", weights=False)
    plan = recipe.plan_for(prep, record["data"]["train_tokens"])
    assert record["plan"] == recipe.dataclasses.asdict(plan)
    assert record["data"]["tokens"] == sum(p.length for p in prep.prompts)
    assert record["final"]["fve"] > 0.98 and record["final"]["dead_fraction"] < 0.15
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(1024), atol=1e-5)


def _logit_diff(lm: models.LoadedModel, text: str, target: str, foil: str, hook: object = None) -> float:
    ids = lm.tokenizer(text, return_tensors="pt")["input_ids"]
    handle = lm.model.transformer.h[2].register_forward_hook(hook) if hook else None
    try:
        with torch.no_grad():
            logits = lm.model(ids).logits[0, -1]
    finally:
        if handle is not None:
            handle.remove()
    tid, fid = (lm.tokenizer(t)["input_ids"][0] for t in (target, foil))
    return float(logits[tid] - logits[fid])


def test_sae_features_config_matches_a_hand_written_feature_patch(tmp_path: Path) -> None:
    sets = ["prompts.limit=1", "sweep.feature=[596,482,655]"]
    args = ["run", str(CONFIGS / "sae_features.yaml"), "--out", str(tmp_path), "-q"]
    result = runner.invoke(app, args + [x for s in sets for x in ("--set", s)])
    assert result.exit_code == 0, result.output
    run_dir = Path(result.output.strip().splitlines()[-1])
    rows = {r["feature"]: r for r in map(json.loads, (run_dir / "results.jsonl").read_text().splitlines())}
    record = json.loads((CONFIGS / "data" / "city_swap.jsonl").read_text().splitlines()[0])
    lm, sae = models.load("ivx-toy"), saes.load(BUNDLED)
    with torch.no_grad():
        source = lm.model(
            lm.tokenizer(record["source"], return_tensors="pt")["input_ids"], output_hidden_states=True
        )
        base = lm.model(
            lm.tokenizer(record["base"], return_tensors="pt")["input_ids"], output_hidden_states=True
        )
        f_src, f_base = sae.encode(source.hidden_states[3][0, -1]), sae.encode(base.hidden_states[3][0, -1])
    for feature, row in rows.items():
        shift = (f_src[feature] - f_base[feature]) * sae.W_dec[feature]  # [d_model]

        def hook(
            module: object, args: object, out: torch.Tensor, shift: torch.Tensor = shift
        ) -> torch.Tensor:
            out = out.clone()
            out[0, -1] += shift
            return out

        expected = _logit_diff(lm, record["base"], record["target"], record["foil"], hook)
        assert row["logit_diff"] == pytest.approx(expected, abs=1e-4), feature
    assert rows[596]["logit_diff_norm"] > rows[655]["logit_diff_norm"]  # 596 carries this answer


def test_sae_steering_config_steers_every_prompt_to_the_features_city(tmp_path: Path) -> None:
    result = runner.invoke(app, ["generate", str(CONFIGS / "sae_steering.yaml"), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    run_dir = Path(result.output.strip().splitlines()[-1])
    rows = [json.loads(line) for line in (run_dir / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    assert all(r["intervened"]["text"].split()[0] == "Lonlonar" for r in rows)
    assert not any(r["unintervened"]["text"].split()[0] == "Lonlonar" for r in rows)


def test_sae_attribution_config_runs_and_verifies(tmp_path: Path) -> None:
    sets = [
        "prompts.limit=1",
        "sweep.position=[last]",
        "attribution.verify.top_k=3",
        "attribution.verify.random=3",
    ]
    args = ["run", str(CONFIGS / "sae_attribution.yaml"), "--out", str(tmp_path), "-q"]
    result = runner.invoke(app, args + [x for s in sets for x in ("--set", s)])
    assert result.exit_code == 0, result.output
    summary = json.loads((Path(result.output.strip().splitlines()[-1]) / "summary.json").read_text())
    verified = summary["attribution_verification"]["verified"]
    assert len(verified) == 6  # the 3 largest estimates and 3 random cells, re-run exactly
    assert all(abs(v["estimate"] - v["exact"]) < 1.0 for v in verified)
    top = summary["sae_attribution"]["sites"][0]["top_features"]
    assert top[0]["logit_diff"] > 1.0  # the best feature's estimated shift towards the source city


@pytest.mark.slow
def test_retraining_the_shipped_sae_briefly_lowers_the_loss(tmp_path: Path) -> None:
    """The shipped command, cut to 300 steps: the loss falls and held-out FVE is already high."""
    sets = ["sae_train.steps=300", "sae_train.checkpoint_every=1000"]
    args = ["sae", "train", str(CONFIGS / "sae_train.yaml"), "--out", str(tmp_path), "-q"]
    result = runner.invoke(app, args + [x for s in sets for x in ("--set", s)])
    assert result.exit_code == 0, result.output
    run_dir = Path(result.output.strip().splitlines()[-1])
    losses = [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert sum(losses[-20:]) < sum(losses[:20]) / 5
    assert json.loads((run_dir / "summary.json").read_text())["final"]["fve"] > 0.9


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sae_features.yaml", "sae_attribution.yaml"])
def test_shipped_sae_configs_run_as_shipped(name: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", str(CONFIGS / name), "--out", str(tmp_path), "-q"])
    assert result.exit_code == 0, result.output
    summary = json.loads((Path(result.output.strip().splitlines()[-1]) / "summary.json").read_text())
    assert summary["saes"][0]["fve"] > 0.95
    assert yaml.safe_load((CONFIGS / name).read_text())["saes"][0]["path"].endswith("ivx-toy-sae")
