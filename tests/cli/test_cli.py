"""The CLI end to end: shipped configs validate and run offline; user errors exit 2 cleanly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ivx.cli.app import app
from ivx.recipes import prepare

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
HUB_MODELS = ("gpt2",)
runner = CliRunner()


def needs_hub(path: Path) -> bool:
    return yaml.safe_load(path.read_text())["model"]["name"] in HUB_MODELS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ivx.config import loader as config

    cfg = config.load(path)  # schema, $axis references, prompt files
    assert cfg.records
    if needs_hub(path):
        return  # model-aware checks need the model; covered by the offline configs
    # a training config is checked for `ivx train` (for `ivx run` its kind needs a trained bundle),
    # a generation config (`generate:`) for `ivx generate`
    sections = yaml.safe_load(path.read_text())
    command = next((["--for", c] for c in ("train", "generate", "sae_train") if c in sections), [])
    result = runner.invoke(app, ["validate", str(path), *command])
    assert result.exit_code == 0, result.output
    assert ("activations" if "sae_train" in sections else "cells") in result.output


OFFLINE_RUNS = {
    "activation_patching.yaml": ["prompts.limit=4"],
    "causal_trace.yaml": ["prompts.limit=5", "corrupt.samples=2", "trace.plots_per_fact=1"],
    "das_eval.yaml": ["prompts.limit=10"],
    "activation_patching_heads.yaml": ["prompts.limit=2"],
    "path_patching.yaml": ["prompts.limit=2"],
    "mean_ablation_heads.yaml": ["prompts.limit=3"],
    "attention_pattern.yaml": ["prompts.limit=2"],
    "logit_lens.yaml": ["prompts.limit=3"],
    "dla.yaml": ["prompts.limit=3"],
    "causal_trace_severed.yaml": ["prompts.limit=3", "corrupt.samples=2", "sweep.layer=[0,2]"],
    "causal_trace_corruptions.yaml": [
        "prompts.limit=30",
        "corrupt.0.samples=2",
        "sweep.layer=[1]",
        "sweep.component=[block_output]",
    ],
}


@pytest.mark.parametrize("name", sorted(OFFLINE_RUNS))
def test_offline_config_runs_through_cli(name: str, tmp_path: Path) -> None:
    sets = [x for item in OFFLINE_RUNS[name] for x in ("--set", item)]
    result = runner.invoke(
        app, ["run", str(ROOT / "configs" / name), "--out", str(tmp_path), "--quiet", *sets]
    )
    assert result.exit_code == 0, result.output
    run_dir = Path(result.output.strip().splitlines()[-1])
    assert run_dir.parent == tmp_path
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    for file in (
        "config.yaml",
        "resolved.yaml",
        "plan.jsonl",
        "results.jsonl",
        "results.csv",
        "summary.json",
    ):
        assert (run_dir / file).is_file(), file
    if yaml.safe_load((ROOT / "configs" / name).read_text()).get("output", {}).get("plots", True):
        assert list((run_dir / "plots").glob("*.png"))


def test_train_config_runs_through_cli(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "train",
            str(ROOT / "configs" / "das.yaml"),
            "--out",
            str(tmp_path),
            "--set",
            "sweep.layer=[3]",
            "--set",
            "sweep.position=[last]",
            "--set",
            "train.epochs=1",
            "--set",
            "prompts.limit=80",
        ],
    )
    assert result.exit_code == 0, result.output
    run_dir = Path(result.output.strip().splitlines()[-1])
    assert (run_dir / "bundle" / "ivx_bundle.json").is_file() and (run_dir / "metrics.jsonl").is_file()
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "complete"
    summary = json.loads((run_dir / "summary.json").read_text())
    point = summary["points"][0]
    assert "held-out IIA (random-basis control)" in result.output
    row = next(line for line in result.output.splitlines() if line.startswith("site "))
    assert row.split() == ["site", f"{point['iia']:.3f}", f"{point['control_iia']:.3f}"]
    assert "holds point 0" in (run_dir / "bundle" / "README.md").read_text()
    assert (run_dir / "plots" / "training.png").is_file()


def test_das_eval_prints_its_metrics(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["run", str(ROOT / "configs" / "das_eval.yaml"), "--out", str(tmp_path), "--set", "prompts.limit=10"],
    )
    assert result.exit_code == 0, result.output
    run_dir = Path(result.output.strip().splitlines()[-1])
    entry = json.loads((run_dir / "summary.json").read_text())["grid"][0]
    line = next(x for x in result.output.splitlines() if x.startswith("target_prob"))
    assert line.split()[1:4] == [f"{entry['target_prob']:.3f}", f"{entry['target_prob_stderr']:.3f}", "10"]


def test_severed_trace_aggregates_conditions_apart(tmp_path: Path) -> None:
    sets = ["prompts.limit=3", "corrupt.samples=2", "sweep.layer=[0]", "trace.select_correct=false"]
    result = runner.invoke(
        app,
        ["run", str(ROOT / "configs" / "causal_trace_severed.yaml"), "--out", str(tmp_path), "-q"]
        + [x for s in sets for x in ("--set", s)],
    )
    assert result.exit_code == 0, result.output
    run_dir = Path(result.output.strip().splitlines()[-1])
    trace = json.loads((run_dir / "summary.json").read_text())["trace"]
    assert list(trace["components"]) == [
        "block_output | sever=none",
        "block_output | sever=mlp_output",
        "block_output | sever=attention_output",
    ]
    rows = [json.loads(x) for x in (run_dir / "results.jsonl").read_text().splitlines()]
    # restoring the last token's final-layer-0 state: nothing later is severed on the MLP side
    # beyond what that state carries, so each condition's mean is its own rows' mean
    for cond in ("none", "mlp_output", "attention_output"):
        mine = [r for r in rows if r["sever"] == cond]
        last = [
            r["indirect_effect"]
            for r in mine
            if r["position"] == max(x["position"] for x in mine if x["prompt_index"] == r["prompt_index"])
        ]
        got = trace["components"][f"block_output | sever={cond}"]["by_category"]["last"]["mean"][0]
        assert got == pytest.approx(sum(last) / len(last))
    from ivx.results import plots

    assert (run_dir / "plots" / "severed.png").is_file()
    fig = plots.severed_figure(trace)  # ROME Fig. 3: one bar group per layer, one bar per condition
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "nothing severed",
        "MLPs severed",
        "attention severed",
    ]
    from matplotlib.container import BarContainer

    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    for container, key in zip(bars, trace["components"], strict=True):
        expected = trace["components"][key]["by_category"]["subject_last"]["mean"][0]
        assert container.patches[0].get_height() == pytest.approx(expected)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


BASE = """name: bad
model: {name: ivx-toy}
prompts:
  - {base: "In the old records , the Zorvan Tower is located in the city of", target: " Trelin"}
interventions:
  - kind: vanilla
    component: block_output
    layer: 1
    position: last
    source: base
metrics: [target_prob]
"""


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "    layer: 1",
            "    layer: 7",
            ":8  interventions[0].layer  layer 7 is out of range: the model has 4 layers (0..3)",
        ),
        (
            "    position: last",
            "    position: 40",
            ":9  interventions[0].position  prompt 0: position 40 is outside the prompt",
        ),
        (
            "    position: last",
            "    position: subject",
            ":9  interventions[0].position  prompt 0: position 'subject' needs a `subject`",
        ),
        (
            "    component: block_output",
            "    component: mlp_outptu",
            ":7  interventions[0].component  unknown component 'mlp_outptu'; did you mean 'mlp_output'?",
        ),
        ("    layer: 1", "    layer: $layer", ":8  interventions[0].layer  unknown sweep axis '$layer'"),
        ("  - {base:", "  - {bse:", ":4  prompts[0].bse  unknown key 'bse'; did you mean 'base'?"),
        (
            "model: {name: ivx-toy}",
            "model: {name: ivx-toy, dtype: f32}",
            ":2  model.dtype  'f32' is not allowed",
        ),
    ],
)
def test_bad_config_exit_2_with_file_line(old: str, new: str, expected: str, tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace(old, new))
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    assert f"{path}{expected}" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()  # nothing was run or written


def test_missing_prompt_file_and_unknown_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(
        tmp_path,
        BASE.replace(
            '  - {base: "In the old records , the Zorvan Tower is located in the city of", target: " Trelin"}',
            "  file: nope.jsonl",
        ),
    )
    result = runner.invoke(app, ["validate", str(path)])
    assert (
        result.exit_code == 2
        and f"{path}:4  prompts.file  prompt file 'nope.jsonl' not found" in result.output
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = write(tmp_path, BASE.replace("ivx-toy", "no-such-org/no-such-model"))
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert "no-such-org/no-such-model" in result.output and "Traceback" not in result.output


def test_components_command_lists_shapes() -> None:
    result = runner.invoke(app, ["components", "ivx-toy"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "4 layers" in result.output and "d_model 128" in result.output
    assert "head_attention_value_output" in result.output and "4 heads × 32" in result.output


def test_resume_computes_only_missing_cells(tmp_path: Path) -> None:
    args = [
        "run",
        str(ROOT / "configs" / "activation_patching.yaml"),
        "--out",
        str(tmp_path),
        "--quiet",
        "--set",
        "prompts.limit=3",
        "--set",
        "output.plots=false",  # resume is the point here; the figures are tested elsewhere
    ]
    result = runner.invoke(app, args)
    run_dir = Path(result.output.strip().splitlines()[-1])
    full = (run_dir / "results.jsonl").read_text().splitlines()
    (run_dir / "results.jsonl").write_text("\n".join(full[:20]) + "\n" + full[20][:15])  # a crash mid-write
    manifest = json.loads((run_dir / "manifest.json").read_text())
    (run_dir / "manifest.json").write_text(json.dumps({**manifest, "status": "failed"}))
    result = runner.invoke(app, ["run", "--resume", str(run_dir), "--quiet"])
    assert result.exit_code == 0, result.output
    again = (run_dir / "results.jsonl").read_text().splitlines()
    assert sorted(again) == sorted(full)
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "complete"


def test_missing_vector_file_is_a_config_error_before_running(tmp_path: Path) -> None:
    text = BASE.replace("    source: base\n", "").replace(
        "kind: vanilla", "kind: set\n    vector: nope.safetensors"
    )
    path = write(tmp_path, text)
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    assert f"{path}:7  interventions[0].vector  'nope.safetensors' not found" in result.output
    assert not (tmp_path / "runs").exists()


def test_validate_reads_no_weights_unless_asked(tiny_model_dir, tmp_path: Path) -> None:
    import shutil

    model = tmp_path / "no-weights"
    shutil.copytree(tiny_model_dir("llama"), model)
    (model / "model.safetensors").unlink()
    cfg = {
        "name": "v",
        "model": {"name": str(model)},
        "prompts": [
            {"base": "When Mary and John went to the store , John gave a drink to", "target": " Mary"}
        ],
        "sweep": {"layer": "all", "position": [0, -1]},
        "interventions": [
            {"kind": "zero", "component": "mlp_output", "layer": "$layer", "position": "$position"}
        ],
    }
    path = tmp_path / "v.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "cells      4" in result.output  # 2 layers x 2 positions
    cfg["sweep"]["layer"] = [0, 5]  # model-aware checks still apply on the meta device
    path.write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "layer" in result.output and "5" in result.output, result.output
    # with --weights (as in `ivx run`) the structural problem is still reported before any load
    result = runner.invoke(app, ["validate", str(path), "--weights"])
    assert result.exit_code == 2 and "layer" in result.output and "from " not in result.output, result.output
    cfg["sweep"]["layer"] = "all"
    path.write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["validate", str(path), "--weights"])
    assert result.exit_code == 2 and f"from {model}" in result.output, result.output
    assert "Traceback" not in result.output


def test_validate_estimates_the_logits_file(monkeypatch: pytest.MonkeyPatch) -> None:
    from ivx.model import loading as models
    from ivx.plan import estimate

    path = ROOT / "configs" / "activation_patching.yaml"
    sets = ["--set", "prompts.limit=3", "--set", "output.logits=last"]
    preps = prepare.prepare_all(path, tuple(sets[1::2]), weights=False)
    cells = sum(len(p.plan.cells) for p in preps)
    vocab = models.load("ivx-toy", weights=False).info.vocab_size
    # one [vocab] float32 row per cell, plus clean / corrupted / source baselines per prompt
    assert estimate.tensor_bytes(preps) == 4 * vocab * (cells + 3 * 3)
    result = runner.invoke(app, ["validate", str(path), *sets])
    assert result.exit_code == 0 and "tensors    ~" in result.output and "warning" not in result.output
    monkeypatch.setattr(estimate, "LARGE_TENSORS", 1000)
    result = runner.invoke(app, ["validate", str(path), *sets])
    assert result.exit_code == 0 and "warning: output.logits: last" in result.output, result.output
