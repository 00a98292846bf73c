"""Built-in controls: random_init, placebo (ivx run) and shuffled_labels (ivx train)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from ivx.engine import answers
from ivx.methods import controls, das_controls
from ivx.model import loading as models
from ivx.recipes import prepare, train
from ivx.recipes import run as experiment

ROOT = Path(__file__).resolve().parents[2]
RECORD = {
    "base": "When Mary and John went to the store , John gave a drink to",
    "source": "When Mary and John went to the store , Mary gave a drink to",
    "target": " Mary",
    "foil": " John",
}
PATCH = {
    "sweep": {"layer": "all", "position": "all"},
    "interventions": [
        {"kind": "vanilla", "component": "block_output", "layer": "$layer", "position": "$position"}
    ],
    "metrics": ["logit_diff", "target_prob"],
}


def write(tmp: Path, name: str, model: str, **fields: object) -> Path:
    cfg = {
        "name": name,
        "model": {"name": model},
        "prompts": [RECORD],
        "output": {"root": str(tmp), "logits": "none", "plots": True},
        **PATCH,
        **fields,
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def rows_of(path: Path) -> list[dict]:
    return sorted((json.loads(x) for x in path.read_text().splitlines()), key=lambda r: r["cell"])


def test_reinitialised_copy_is_seeded_and_leaves_the_model(tiny_model_dir) -> None:
    """Same architecture, new weights, the same ones for the same seed; the original is untouched."""
    lm = models.load(str(tiny_model_dir("llama")))
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    a, b, c = controls.reinitialised(lm, 0), controls.reinitialised(lm, 0), controls.reinitialised(lm, 1)
    for key, value in lm.model.state_dict().items():
        assert torch.equal(value, before[key])
        assert torch.equal(a.model.state_dict()[key], b.model.state_dict()[key])
        assert a.model.state_dict()[key].shape == value.shape
    weight = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(a.model.state_dict()[weight], before[weight])
    assert not torch.equal(a.model.state_dict()[weight], c.model.state_dict()[weight])


def test_random_init_control_is_the_same_sweep_on_the_reinitialised_model(
    tiny_model_dir, tmp_path: Path
) -> None:
    """The control's rows equal an ordinary run of the same config on the re-initialised model,
    saved to disk and loaded like any model (an independent path through ivx)."""
    lm = models.load(str(tiny_model_dir("gpt2")))
    run_dir = experiment.run(
        write(tmp_path, "real", str(lm.path), controls=["random_init"]), progress=False, lm=lm
    )
    saved = tmp_path / "reinit"
    controls.reinitialised(lm, 0).model.save_pretrained(saved)
    lm.tokenizer.save_pretrained(saved)
    other = experiment.run(write(tmp_path, "other", str(saved)), progress=False)
    control = rows_of(run_dir / "controls" / "random_init" / "results.jsonl")
    plain = rows_of(other / "results.jsonl")
    assert len(control) == len(plain) > 10
    for c, p in zip(control, plain, strict=True):
        assert c["logit_diff"] == pytest.approx(p["logit_diff"], abs=1e-5)
    real = rows_of(run_dir / "results.jsonl")
    assert max(abs(r["logit_diff"] - c["logit_diff"]) for r, c in zip(real, control, strict=True)) > 1e-3
    summary = json.loads((run_dir / "summary.json").read_text())
    entry = summary["controls"]["random_init"]
    assert entry["metric"] == "logit_diff" and len(entry["grid"]) == len(summary["grid"])
    means = [g["logit_diff"] for g in entry["grid"]]
    assert entry["spread"] == pytest.approx(max(means) - min(means))
    assert (run_dir / "plots" / "controls_logit_diff.png").is_file()


def test_placebo_keeps_each_norm_and_changes_each_direction(tiny_model_dir, tmp_path: Path) -> None:
    """Placebo sources: per position the same norm as the real activation, another direction."""
    lm = models.load(str(tiny_model_dir("gpt2")))
    (prep,) = prepare.prepare_all(write(tmp_path, "p", str(lm.path), controls=["placebo"]), lm=lm)
    executor = answers.executor(prep.cfg, lm, prep.prompts, prep.plan)
    with torch.inference_mode():
        executor.prepare()
    real = {k: {p: t.clone() for p, t in v.items()} for k, v in executor.base.source_acts.items()}
    assert real
    controls.placebo(executor, seed=0)
    for key, by_prompt in real.items():
        for prompt, value in by_prompt.items():
            fake = executor.base.source_acts[key][prompt]
            assert torch.allclose(fake.norm(dim=-1), value.norm(dim=-1), rtol=1e-5)
            cos = torch.nn.functional.cosine_similarity(fake, value, dim=-1)
            assert float(cos.abs().max()) < 0.9


def test_margin_warnings() -> None:
    """A control within MARGIN of the real IIA warns; one far below does not."""
    points = [
        {"point": 0, "iia": 1.0, "control_iia": 0.0, "shuffled_labels_iia": 0.6},
        {"point": 1, "iia": 1.0, "control_iia": 0.1, "random_init_iia": 0.4},
    ]
    out = das_controls.das_warnings(points)
    assert len(out) == 1 and out[0].startswith("point 0: shuffled_labels IIA 0.600")


def test_random_init_trace_shows_no_localisation(tmp_path: Path) -> None:
    """ivx-toy's causal trace localises the fact (AIE near 1 at some site); the same trace on the
    re-initialised model finds nothing anywhere, and the control sits beside it in summary.json."""
    cfg = yaml.safe_load((ROOT / "configs" / "causal_trace.yaml").read_text())
    cfg["prompts"] = {"file": str(ROOT / "configs" / "data" / "facts.jsonl"), "limit": 4}
    cfg["corrupt"]["samples"] = 2
    cfg["sweep"]["component"] = ["block_output"]
    cfg["trace"] = {**cfg.get("trace", {}), "plots_per_fact": 0}
    cfg["output"] = {"root": str(tmp_path), "logits": "none", "plots": True}
    cfg["controls"] = ["random_init"]
    path = tmp_path / "trace.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_dir = experiment.run(path, progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    control = summary["controls"]["random_init"]
    assert control["metric"] == "indirect_effect"
    assert control["real_spread"] > 0.5
    assert control["spread"] < 0.01
    by_category = control["trace"]["components"]["block_output"]["by_category"]
    assert max(abs(v) for cat in by_category.values() for v in cat["mean"]) < 0.01
    assert not [w for w in summary.get("warnings", []) if w.startswith("control")]
    assert (run_dir / "controls" / "random_init" / "plots" / "average_by_category.png").is_file()


@pytest.mark.slow
def test_das_city_stands_above_its_controls(tmp_path: Path) -> None:
    """ivx-toy's DAS city subspace: held-out IIA near 1; trained on shuffled labels, or on the
    re-initialised model, and untrained (random basis), IIA stays near 0."""
    run_dir = train.train_run(
        ROOT / "configs" / "das.yaml",
        (
            "sweep.layer=[3]",
            "sweep.position=[last]",
            "train.epochs=3",
            "prompts.limit=240",
            "train.lr=0.02",
            "controls=[shuffled_labels, random_init]",
        ),
        str(tmp_path),
        None,
        lambda m: None,
    )
    (row,) = map(json.loads, (run_dir / "results.jsonl").read_text().splitlines())
    assert row["iia"] >= 0.9, row
    for name in ("control_iia", "shuffled_labels_iia", "random_init_iia"):
        assert row[name] <= 0.1, row
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["warnings"] == []
    assert (run_dir / "plots" / "iia_controls.png").is_file()
