"""Prompt sources users have: ROME's known_1000.json and CounterFact layouts, `datasets` directories,
and JSONL files read only up to `limit`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ivx.cli.app import app
from ivx.config import loader as config
from ivx.config import sources as prompts
from ivx.config.inputs import PromptFile

runner = CliRunner()
KNOWN = [  # the layout of ROME's known_1000.json
    {
        "known_id": 0,
        "subject": "Space Needle",
        "attribute": "Seattle",
        "template": "{} is located in the city of",
        "prediction": " Seattle",
        "prompt": "The Space Needle is located in the city of",
        "relation_id": "P131",
    },
    {
        "known_id": 1,
        "subject": "Eiffel Tower",
        "attribute": "Paris",
        "template": "{} is located in the city of",
        "prediction": " Paris",
        "prompt": "The Eiffel Tower is located in the city of",
        "relation_id": "P131",
    },
    {
        "known_id": 2,
        "subject": "Colosseum",
        "attribute": "Rome",
        "template": "{} is located in the city of",
        "prediction": " Rome",
        "prompt": "The Colosseum is located in the city of",
        "relation_id": "P131",
    },
]
COUNTERFACT = {  # one record in the layout of ROME's counterfact.json
    "case_id": 0,
    "requested_rewrite": {
        "prompt": "{} is located in the city of",
        "relation_id": "P131",
        "subject": "Big Ben",
        "target_new": {"str": "Paris", "id": "Q90"},
        "target_true": {"str": "London", "id": "Q84"},
    },
    "paraphrase_prompts": [],
    "neighborhood_prompts": [],
}


def _config(tmp_path: Path, model: Path, prompt_spec: dict) -> Path:
    cfg = {
        "name": "sources",
        "model": {"name": str(model)},
        "prompts": prompt_spec,
        "corrupt": {"kind": "noise", "samples": 2},
        "sweep": {"layer": "all"},
        "interventions": [
            {"kind": "vanilla", "component": "block_output", "layer": "$layer", "position": "subject_last"}
        ],
        "metrics": ["indirect_effect", "target_prob"],
        "output": {"plots": False, "root": str(tmp_path / "runs")},
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _summary(result) -> dict:  # type: ignore[no-untyped-def]
    assert result.exit_code == 0, result.output
    return json.loads((Path(result.output.strip().splitlines()[-1]) / "summary.json").read_text())


def test_known_1000_layout_runs_with_limit(tiny_model_dir, tmp_path: Path) -> None:
    (tmp_path / "known_1000.json").write_text(json.dumps(KNOWN, indent=2))
    path = _config(tmp_path, tiny_model_dir("gpt2"), {"file": "known_1000.json", "limit": 2})
    summary = _summary(runner.invoke(app, ["run", str(path), "--quiet"]))
    assert [p["base"] for p in summary["prompts"]] == [k["prompt"] for k in KNOWN[:2]]
    cfg = config.load(path)
    assert [(r.subject, r.target) for r in cfg.records] == [
        ("Space Needle", " Seattle"),
        ("Eiffel Tower", " Paris"),
    ]


def test_counterfact_layout_maps_true_and_new_targets(tmp_path: Path) -> None:
    spec = PromptFile(file="cf.json")
    (tmp_path / "cf.json").write_text(json.dumps([COUNTERFACT]))
    [row] = list(prompts.rows(spec, tmp_path))
    assert prompts.to_record(row.data, spec) == {
        "base": "Big Ben is located in the city of",
        "subject": "Big Ben",
        "target": " London",
        "foil": " Paris",
    }


def test_json_array_is_read_incrementally(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prompts, "CHUNK", 64)  # records straddle many chunk boundaries
    (tmp_path / "k.json").write_text(json.dumps(KNOWN * 5))
    got = [r.data for r in prompts.rows(PromptFile(file="k.json"), tmp_path)]
    assert got == KNOWN * 5


def test_jsonl_limit_stops_reading(tiny_model_dir, tmp_path: Path) -> None:
    good = {"base": "The Space Needle is in downtown", "subject": "Space Needle", "target": " Seattle"}
    (tmp_path / "facts.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n{ not json\n")
    path = _config(tmp_path, tiny_model_dir("gpt2"), {"file": "facts.jsonl", "limit": 2})
    assert len(config.load(path).records) == 2  # the broken third line is never read
    path = _config(tmp_path, tiny_model_dir("gpt2"), {"file": "facts.jsonl"})
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and f"{tmp_path / 'facts.jsonl'}:3" in result.output


def test_datasets_directory_runs_offline_with_columns(tiny_model_dir, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rows = [
        {"prompt": k["prompt"], "subj": k["subject"], "answer": {"true": " " + k["attribute"]}} for k in KNOWN
    ]
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "facts_ds"))
    spec = {
        "dataset": "facts_ds",
        "split": "test",
        "columns": {"base": "prompt", "subject": "subj", "target": "answer.true"},
    }
    path = _config(tmp_path, tiny_model_dir("gpt2"), spec)
    summary = _summary(runner.invoke(app, ["run", str(path), "--quiet"]))
    assert [p["base"] for p in summary["prompts"]] == [k["prompt"] for k in KNOWN]
    # a directory of JSON files (load_dataset's local path) works the same way, also offline
    (tmp_path / "json_ds").mkdir()
    (tmp_path / "json_ds" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = config.load(
        _config(
            tmp_path, tiny_model_dir("gpt2"), {**spec, "dataset": "json_ds", "split": "train", "limit": 2}
        )
    )
    assert [r.target for r in cfg.records] == [" Seattle", " Paris"]


def test_bad_column_and_missing_split_are_config_errors(tmp_path: Path, tiny_model_dir) -> None:
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list([{"prompt": "a b"}]).save_to_disk(str(tmp_path / "ds"))
    path = _config(tmp_path, tiny_model_dir("gpt2"), {"dataset": "ds", "columns": {"base": "text"}})
    result = runner.invoke(app, ["validate", str(path)])
    assert (
        result.exit_code == 2
        and "column 'text' is missing" in result.output
        and "Traceback" not in result.output
    )
