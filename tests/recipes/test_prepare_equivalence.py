"""`ivx validate --for X` ≡ `ivx X`: one `prepare`, so the same config problems, exit 2, no run directory.

The bad-config corpus (run configs) and a generated set per command — a subspace wider than its
site, sections, fields and controls the command ignores, a bad layer, position or head, a missing
file, an unknown field, a prompt too long for the model, a bad sweep value — go through both the
validator (meta device) and the command itself; each must print the same set of problem lines.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ivx.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
CORPUS = sorted((ROOT / "tests" / "data" / "bad_configs").glob("*.yaml"))
CITY_SWAP = ROOT / "configs" / "data" / "city_swap.jsonl"
STEER = ROOT / "configs" / "data" / "steer_city.jsonl"
BUNDLE = ROOT / "configs" / "bundles" / "das_city"
FACT = "According to the map , Zormoxis is located in the city of"
OTHER = "According to the map , Kelfyrar is located in the city of"
runner = CliRunner()

BASE: dict[str, dict] = {
    "run": {
        "name": "eq",
        "model": {"name": "ivx-toy"},
        "prompts": [{"base": FACT, "subject": "Zormoxis", "target": " Quajunar"}],
        "corrupt": {"kind": "noise", "samples": 2},
        "sweep": {"layer": "all"},
        "interventions": [
            {"kind": "vanilla", "component": "block_output", "layer": "$layer", "position": "last"}
        ],
        "metrics": ["indirect_effect"],
    },
    "generate": {
        "name": "eq",
        "model": {"name": "ivx-toy"},
        "prompts": [{"base": FACT}, {"base": OTHER}],
        "sweep": {"layer": [1, 2]},
        "interventions": [
            {"kind": "zero", "component": "block_output", "layer": "$layer", "position": "last"}
        ],
        "generate": {"max_new_tokens": 2},
    },
    "train": {
        "name": "eq",
        "model": {"name": "ivx-toy"},
        "prompts": {"file": str(CITY_SWAP), "limit": 8},
        "sweep": {"position": ["last"]},
        "interventions": [
            {
                "kind": "low_rank_rotated_space",
                "component": "block_output",
                "layer": 1,
                "position": "$position",
                "low_rank_dimension": 4,
            }
        ],
        "train": {"epochs": 1, "batch_size": 4},
    },
}
LONG = " ".join([FACT] * 8)
HEAD = {"component": "head_attention_value_output", "head": 99}

# (command, case name, changes to the base config, text one problem line must contain)
CASES: list[tuple[str, str, dict, str]] = [
    ("run", "shuffled_labels", {"controls": ["shuffled_labels"]}, "applies to `ivx train` only"),
    ("run", "generate_section", {"generate": {"max_new_tokens": 3}}, "`generate:` holds the settings"),
    ("run", "train_section", {"train": {"epochs": 1}}, "`train:` holds the settings"),
    ("run", "attribution_without_method", {"attribution": {"qk_fix": True}}, "this run uses method: exact"),
    ("run", "top_k_without_metric", {"output": {"top_k": 3}}, "metrics has no top_k"),
    ("run", "bad_layer", {"sweep": {}, "iv": {"layer": 99}}, "out of range"),
    ("run", "bad_position", {"iv": {"position": 500}}, "position 500"),
    ("run", "bad_head", {"iv": HEAD}, "head 99 is out of range"),
    ("run", "missing_prompts_file", {"prompts": {"file": "nope.jsonl"}}, "not found"),
    ("run", "missing_vector", {"iv": {"kind": "set", "vector": "nope.safetensors"}}, "not found"),
    ("run", "unknown_field", {"modle": "gpt2"}, "unknown key 'modle'"),
    (
        "run",
        "prompt_too_long",
        {"prompts": [{"base": LONG, "subject": "Zormoxis", "subject_occurrence": 1, "target": " a"}]},
        "positions",
    ),
    ("run", "bad_sweep_value", {"sweep": {"layer": [0, 99]}}, "sweep.layer[1]"),
    ("generate", "controls", {"controls": ["random_init"]}, "`ivx generate` runs no controls"),
    ("generate", "train_section", {"train": {"epochs": 1}}, "`train:` holds the settings"),
    ("generate", "backend_ray", {"backend": "ray"}, "backend: ray distributes"),
    ("generate", "ray_section", {"ray": {"actors": 1}}, "`ray:` configures"),
    ("generate", "batch", {"batch": {"size": 4}}, "`batch:` sizes"),
    ("generate", "trace", {"trace": {"select_correct": True}}, "trace.select_correct"),
    ("generate", "attribution", {"method": "attribution"}, "method: attribution is `ivx run`'s"),
    (
        "generate",
        "receivers",
        {"iv": {"kind": "vanilla", "receivers": [{"component": "mlp_input", "layer": 2}]}},
        "receivers",
    ),
    ("generate", "corrupt", {"corrupt": {"kind": "noise", "sigma": 1.0}}, "does not corrupt prompts"),
    ("generate", "bad_layer", {"sweep": {}, "iv": {"layer": 99}}, "out of range"),
    ("generate", "bad_position", {"iv": {"position": 500}}, "position 500"),
    ("generate", "bad_head", {"iv": HEAD}, "head 99 is out of range"),
    ("generate", "missing_vector", {"iv": {"kind": "set", "vector": "nope.safetensors"}}, "not found"),
    (
        "generate",
        "missing_contrast",
        {"iv": {"kind": "addition", "contrast": {"file": "nope.jsonl"}}},
        "not found",
    ),
    ("generate", "unknown_field", {"generate": {"max_new_tokens": 2, "tokens": 3}}, "unknown key 'tokens'"),
    ("generate", "prompt_too_long", {"prompts": [{"base": LONG}]}, "positions"),
    ("generate", "bad_sweep_value", {"sweep": {"layer": [1, 99]}}, "sweep.layer[1]"),
    ("train", "too_wide", {"iv": {"low_rank_dimension": 100000}}, "exceeds the width of block_output (128)"),
    (
        "train",
        "too_wide_swept",
        {"sweep": {"position": ["last"], "k": [4, 100000]}, "iv": {"low_rank_dimension": "$k"}},
        "sweep.k",
    ),
    ("train", "generate_section", {"generate": {"max_new_tokens": 3}}, "`generate:` holds the settings"),
    ("train", "backend_ray", {"backend": "ray"}, "backend: ray distributes"),
    ("train", "batch", {"batch": {"size": 4}}, "train.batch_size"),
    ("train", "trace", {"trace": {"window": {}}}, "`trace:` is `ivx run`'s causal-tracing analysis"),
    ("train", "metrics", {"metrics": ["target_prob"]}, "interchange intervention accuracy"),
    ("train", "logits", {"output": {"logits": "all"}}, "no logits"),
    ("train", "plots_off", {"output": {"plots": False}}, "always writes its plots"),
    ("train", "bundle", {"iv": {"bundle": str(BUNDLE)}}, "fresh initialisation"),
    ("train", "data_city_swap", {"train": {"data": "city_swap"}}, "not implemented"),
    ("train", "one_record", {"prompts": {"file": str(CITY_SWAP), "limit": 1}}, "at least 2 records"),
    ("train", "bad_layer", {"iv": {"layer": 99}}, "out of range"),
    ("train", "bad_position", {"sweep": {"position": [500]}}, "position 500"),
    ("train", "missing_prompts_file", {"prompts": {"file": "nope.jsonl"}}, "not found"),
    ("train", "unknown_field", {"train": {"epochs": 1, "epoch": 2}}, "unknown key 'epoch'"),
    (
        "train",
        "prompt_too_long",
        {"prompts": [{"base": LONG, "source": LONG, "target": " a"}] * 2},
        "positions",
    ),
    ("train", "bad_sweep_value", {"sweep": {"position": ["last", "lats"]}}, "sweep.position[1]"),
]


def write(tmp_path: Path, command: str, changes: dict) -> Path:
    """The command's base config with `changes` (`iv`: fields of the one intervention)."""
    data = yaml.safe_load(yaml.safe_dump(BASE[command]))
    changes = dict(changes)
    data["interventions"][0].update(changes.pop("iv", {}))
    data.update(changes)
    path = tmp_path / f"{command}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def problem_lines(output: str) -> set[str]:
    return {line for line in output.splitlines() if line.strip() and "problem(s) found" not in line}


def both(path: Path, command: str, out: Path) -> tuple[set[str], set[str]]:
    """Problem lines of `ivx validate --for command` and of `ivx command`; both must exit 2."""
    checked = runner.invoke(app, ["validate", str(path), "--for", command])
    extra = ["--quiet"] if command == "run" else []
    ran = runner.invoke(app, [command, str(path), "--out", str(out), *extra])
    for result in (checked, ran):
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
    assert not out.exists() or not any(out.iterdir()), "a run directory was written"
    return problem_lines(checked.output), problem_lines(ran.output)


@pytest.mark.parametrize("command", sorted(BASE))
def test_every_base_config_is_valid_for_its_command(command: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(write(tmp_path, command, {})), "--for", command])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("command", "name", "changes", "expect"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES]
)
def test_validate_for_a_command_reports_what_the_command_reports(
    command: str, name: str, changes: dict, expect: str, tmp_path: Path
) -> None:
    path = write(tmp_path, command, changes)
    checked, ran = both(path, command, tmp_path / "runs")
    assert checked == ran
    assert any(expect in line for line in checked), checked
    assert all(line.startswith((str(path), "error: ", "--set")) for line in checked), checked


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_the_bad_config_corpus_is_refused_alike_by_validate_and_run(path: Path, tmp_path: Path) -> None:
    checked, ran = both(path, "run", tmp_path / "runs")
    assert checked == ran and len(checked) == 1


@pytest.mark.parametrize(
    ("command", "changes"),
    [
        ("train", {"controls": ["placebo", "shuffled_labels", "random_init"]}),  # train reports all three
        ("train", {"train": {"max_records": 2}, "prompts": {"file": "few.jsonl"}}),  # record 3 is never read
        (
            "generate",
            {"metrics": ["logit_diff"], "output": {"logits": "none", "plots": True}},
        ),  # a run config
        ("run", {"controls": ["random_init", "placebo"], "ray": {"actors": 1}}),  # --backend ray reads `ray:`
        # issue #27: ivx run builds contrast vectors (was refused here; tests/recipes/test_contrast_run.py)
        ("run", {"iv": {"kind": "addition", "contrast": {"file": str(STEER)}}}),
    ],
    ids=["train-controls", "train-max_records", "generate-run-settings", "run-controls-ray", "run-contrast"],
)
def test_fields_a_command_honours_are_accepted(command: str, changes: dict, tmp_path: Path) -> None:
    records = [json.loads(x) for x in CITY_SWAP.read_text().splitlines()[:2]] + [{"base": "no source"}]
    (tmp_path / "few.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    result = runner.invoke(app, ["validate", str(write(tmp_path, command, changes)), "--for", command])
    assert result.exit_code == 0, result.output


def test_das_with_a_subspace_wider_than_its_site_fails_alike(tmp_path: Path) -> None:
    """The case the issue measured: validate used to accept what `ivx train` refused."""
    das = ROOT / "configs" / "das.yaml"
    sets = ["--set", "sweep.low_rank_dimension=[100000]"]
    checked = runner.invoke(app, ["validate", str(das), "--for", "train", *sets])
    ran = runner.invoke(app, ["train", str(das), *sets, "--out", str(tmp_path)])
    line = f"{das}:13  sweep.low_rank_dimension  low_rank_dimension 100000 exceeds the width of block_output (128)"
    assert checked.exit_code == ran.exit_code == 2
    assert problem_lines(checked.output) == problem_lines(ran.output) == {line}
    assert not any(tmp_path.iterdir())
