"""`ivx sae train` end to end on ivx-toy: the activations it reads, the SAE it writes (loaded back through
ivx's SAE reader), bit-identical resumption, and config errors located at their YAML lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from ivx.cli.app import app
from ivx.methods import sae_data
from ivx.model import components
from ivx.model import loading as models
from ivx.model import sae as saes
from ivx.plan import tokenization
from ivx.recipes import sae_train as recipe

ROOT = Path(__file__).resolve().parents[2]
FACTS = ROOT / "configs" / "data" / "facts.jsonl"
runner = CliRunner()


def write(tmp_path: Path, section: dict | None = None, **top: object) -> Path:
    data: dict = {
        "name": "sae",
        "model": {"name": "ivx-toy"},
        "seed": 3,
        "prompts": {"file": str(FACTS), "limit": 12},
        **top,
    }
    if section is not None:
        data["sae_train"] = section
    path = tmp_path / "sae.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


SECTION = {
    "component": "blocks.2.hook_resid_post",
    "k": 4,
    "expansion": 2,
    "steps": 12,
    "batch_size": 32,
    "lr": 0.003,
    "dead_after": 3,
    "checkpoint_every": 5,
}


def test_activations_are_the_hidden_states_at_every_token(tiny_model_dir) -> None:
    lm = models.load(str(tiny_model_dir("llama")))  # a BOS-prepending tokenizer
    records = [
        {"base": "The Space Needle is in Seattle"},
        {"base": "When Mary and John went"},
        {"base": "Tom"},
    ]
    from ivx.config.inputs import PromptRecord

    prompts = tokenization.tokenize(lm.tokenizer, [PromptRecord(**r) for r in records], bos=True)
    site = components.resolve(lm.model, lm.info, "block_output", 0)
    acts = sae_data.collect(lm, site, prompts, rows_per_forward=1)
    expected = []
    with torch.no_grad():
        for p in prompts:
            out = lm.model(torch.tensor([p.base_ids]), output_hidden_states=True)
            expected.append(out.hidden_states[1][0])  # [seq, d_model]: after block 0
    assert acts.shape == (sum(p.length for p in prompts), lm.info.d_model)
    assert torch.allclose(acts, torch.cat(expected), atol=1e-6)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(config, run directory) of one uninterrupted `ivx sae train` run of SECTION."""
    tmp = tmp_path_factory.mktemp("sae")
    config = write(tmp, SECTION)
    result = runner.invoke(app, ["sae", "train", str(config), "--out", str(tmp / "runs"), "-q"])
    assert result.exit_code == 0, result.output
    return config, Path(result.output.strip().splitlines()[-1])


def test_trained_sae_loads_back_and_its_metrics_are_recomputable(trained: tuple[Path, Path]) -> None:
    _, run_dir = trained
    sae = saes.load(run_dir)
    assert (sae.architecture, sae.d_in, sae.d_sae, sae.k) == ("topk", 128, 256, 4)
    assert sae.site() == ("block_output", 2) and sae.hook_name == "blocks.2.hook_resid_post"
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(256), atol=1e-5)
    # the held-out metrics, recomputed from output_hidden_states with ivx's SAE reader
    lm = models.load("ivx-toy")
    rows = []
    for line in FACTS.read_text().splitlines()[:12]:
        ids = lm.tokenizer(json.loads(line)["base"], return_tensors="pt")["input_ids"]
        with torch.no_grad():
            rows.append(lm.model(ids, output_hidden_states=True).hidden_states[3][0])
    acts = torch.cat(rows)  # [tokens, 128]
    _, held = sae_data.split(acts.shape[0], 0.1, seed=3)
    x = acts[held]
    f = sae.encode(x)
    fve = 1 - float((sae.decode(f) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    final = json.loads((run_dir / "summary.json").read_text())["final"]
    assert final["fve"] == pytest.approx(fve, abs=1e-5)
    assert final["l0"] == pytest.approx(float((f > 0).sum(-1).float().mean()), abs=1e-6)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 13))
    card = (run_dir / "README.md").read_text()
    assert "blocks.2.hook_resid_post" in card and f"{final['fve']:.4g}" in card
    assert (run_dir / "plots" / "training.png").stat().st_size > 1000
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "complete"


def interrupted(config: Path, out: Path, step: int) -> Path:
    """Train `config` until `step`, then raise KeyboardInterrupt (as Ctrl-C does); the run directory."""

    def stop(phase: str, done: int, total: int, last: dict) -> None:
        if phase == "train" and done == step:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        recipe.train(config, (), str(out), progress=stop)
    (broken,) = out.iterdir()
    return broken


def test_resume_after_an_interruption_is_bit_identical(trained: tuple[Path, Path], tmp_path: Path) -> None:
    config, straight = trained
    broken = interrupted(config, tmp_path / "b", 7)
    assert json.loads((broken / "manifest.json").read_text())["status"] == "failed"
    saved = torch.load(broken / "checkpoints" / recipe.CHECKPOINT, weights_only=True)
    assert saved["step"] == 5  # the last checkpoint before the interruption
    result = runner.invoke(app, ["sae", "train", "--resume", str(broken), "-q"])
    assert result.exit_code == 0, result.output
    for name in ("sae_weights.safetensors", "cfg.json", "metrics.jsonl"):
        assert (broken / name).read_bytes() == (straight / name).read_bytes(), name


def test_resume_refuses_other_prompts(tmp_path: Path) -> None:
    config = write(tmp_path, SECTION)
    broken = interrupted(config, tmp_path / "b", 6)
    config.write_text(config.read_text().replace("limit: 12", "limit: 11"))
    result = runner.invoke(app, ["sae", "train", "--resume", str(broken), "-q"])
    assert result.exit_code == 2, result.output
    assert "cannot be resumed" in result.output and "activations" in result.output


@pytest.mark.parametrize(
    ("section", "where", "message"),
    [
        (None, "", "no `sae_train:` section"),
        ({**SECTION, "k": 300}, "sae_train.k", "more than the 256 latents"),
        ({**SECTION, "component": "block_output", "layer": 9}, "sae_train.layer", "layer"),
        ({**SECTION, "component": "blok_output"}, "sae_train.component", "did you mean 'block_output'"),
        ({**SECTION, "l1_coefficient": 3}, "sae_train", "l1_coefficient applies to architecture: standard"),
        ({**SECTION, "d_sae": 64}, "sae_train", "`d_sae` or `expansion`, not both"),
        ({**SECTION, "steps": 0}, "sae_train.steps", "greater than or equal to 1"),
    ],
)
def test_config_errors_exit_2_at_their_line(
    tmp_path: Path, section: dict | None, where: str, message: str
) -> None:
    config = write(tmp_path, section)
    result = runner.invoke(app, ["sae", "train", str(config), "--out", str(tmp_path / "runs"), "-q"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    line = next(line for line in result.output.splitlines() if message in line)
    assert line.startswith(f"{config}:") and (not where or f"  {where}" in line), line
    assert not (tmp_path / "runs").exists()
    checked = runner.invoke(app, ["validate", str(config), "--for", "sae_train"])
    assert checked.exit_code == 2 and checked.output == result.output  # validate reports the same


def test_sections_the_command_does_not_read_are_problems(tmp_path: Path) -> None:
    config = write(tmp_path, SECTION, interventions=[{"kind": "zero", "layer": 1}], metrics=["logit_diff"])
    result = runner.invoke(app, ["sae", "train", str(config), "--out", str(tmp_path / "runs"), "-q"])
    assert result.exit_code == 2, result.output
    unread = [line for line in result.output.splitlines() if "does not read" in line]
    assert [line.split()[1] for line in unread] == ["interventions", "metrics"]


def test_a_standard_sae_trains_resamples_and_loads_as_relu(tmp_path: Path) -> None:
    section = {
        "component": "mlp_output",
        "layer": 1,
        "architecture": "standard",
        "l1_coefficient": 2.0,
        "d_sae": 64,
        "steps": 8,
        "batch_size": 32,
        "dead_after": 2,
        "resample_every": 3,
    }
    config = write(tmp_path, section)
    run_dir = recipe.train(config, (), str(tmp_path / "runs"))
    sae = saes.load(run_dir)
    assert (sae.architecture, sae.k, sae.hook_name) == ("standard", None, "blocks.1.hook_mlp_out")
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "resampled" in m] == [3, 6]  # never in the last fifth
    x = torch.randn(5, 128, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sae.encode(x), ((x - sae.b_dec) @ sae.W_enc + sae.b_enc).relu())
