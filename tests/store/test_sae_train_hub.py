"""`ivx sae train` → `ivx push --dry-run` → `ivx push` → a config using `hf://` resolution, through the
real huggingface_hub client and the Hub-compatible server on loopback (tests/fakehub.py)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from typer.testing import CliRunner

from ivx.cli.app import app
from ivx.model import sae as saes
from tests.store.test_hub import fake_hub  # noqa: F401 - the loopback Hub fixture

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = ROOT / "src" / "ivx" / "assets" / "ivx-toy-sae"
runner = CliRunner()


def _config(tmp_path: Path, name: str, data: dict) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _run(config: Path, out: Path) -> list[dict]:
    result = runner.invoke(app, ["run", str(config), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    run_dir = Path(result.output.strip().splitlines()[-1])
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]


def test_train_push_and_use_through_hf(fake_hub, tmp_path: Path) -> None:  # noqa: F811
    facts = ROOT / "configs" / "data" / "city_swap.jsonl"
    train = {
        "name": "hub-sae",
        "model": {"name": "ivx-toy"},
        "prompts": {"file": str(facts), "limit": 6},
        "sae_train": {"component": "blocks.1.hook_resid_post", "k": 4, "d_sae": 64, "steps": 4},
    }
    result = runner.invoke(
        app, ["sae", "train", str(_config(tmp_path, "train", train)), "--out", str(tmp_path), "-q"]
    )
    assert result.exit_code == 0, result.output
    run_dir = Path(result.output.strip().splitlines()[-1])
    dry = runner.invoke(app, ["push", str(run_dir), "--repo", "user/toy-sae", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    listed = {line.split()[-1] for line in dry.output.splitlines()[:-1]}
    assert {
        "cfg.json",
        "sae_weights.safetensors",
        "README.md",
        "training.json",
        "plots/training.png",
    } <= listed
    assert not any(name.startswith("checkpoints") for name in listed)  # resumption state stays local
    assert fake_hub.store.repos == {}  # a dry run sends nothing
    pushed = runner.invoke(app, ["push", str(run_dir), "--repo", "user/toy-sae"])
    assert pushed.exit_code == 0, pushed.output
    remote, local = saes.load("hf://user/toy-sae"), saes.load(run_dir)
    assert remote.hook_name == "blocks.1.hook_resid_post" and remote.k == 4
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(remote, name), getattr(local, name)), name
    # the same feature ablation with the SAE from the Hub and from the directory: the same numbers
    run = {
        "name": "use",
        "model": {"name": "ivx-toy"},
        "prompts": {"file": str(facts), "limit": 2},
        "saes": [{"name": "mine", "path": "hf://user/toy-sae"}],
        "interventions": [{"kind": "zero", "sae": "mine", "feature": [0, 1, 2, 3], "position": "last"}],
        "metrics": ["target_prob"],
        "output": {"plots": False, "report": False},
    }
    via_hub = _run(_config(tmp_path, "hub", run), tmp_path / "runs")
    run["saes"] = [{"name": "mine", "path": str(run_dir)}]
    via_dir = _run(_config(tmp_path, "dir", run), tmp_path / "runs")
    assert [r["target_prob"] for r in via_hub] == [r["target_prob"] for r in via_dir]


def test_the_bundled_sae_directory_can_be_pushed(fake_hub, tmp_path: Path) -> None:  # noqa: F811
    dry = runner.invoke(app, ["push", str(BUNDLED), "--repo", "user/ivx-toy-sae", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    listed = {line.split()[-1] for line in dry.output.splitlines()[:-1]}
    assert {"cfg.json", "sae_weights.safetensors", "README.md"} <= listed
    empty = tmp_path / "empty"
    empty.mkdir()
    refused = runner.invoke(app, ["push", str(empty), "--repo", "user/x", "--dry-run"])
    assert refused.exit_code == 2 and "SAE directory" in refused.output
