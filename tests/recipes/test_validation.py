"""Validation is complete and single-stage; the kind table's `all`, `$axis` forms run as written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ivx.cli.app import app

runner = CliRunner()
FACT = "According to the map , Zormoxis is located in the city of"
HEAD = f"""name: v
model: {{name: MODEL}}
prompts:
  - {{base: "{FACT}", subject: Zormoxis, target: " Quajunar"}}
  - {{base: "According to the map , Kelfyrar is located in the city of", subject: Kelfyrar, target: " Gornfyra"}}
"""


def _config(tmp_path: Path, body: str, model: str = "ivx-toy", name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(HEAD.replace("MODEL", model) + body)
    return path


def _problems(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip() and "problem(s) found" not in line]


def test_a_bad_head_and_a_bad_position_are_reported_together(tmp_path: Path) -> None:
    body = """interventions:
  - {kind: zero, component: head_attention_value_output, layer: 0, head: 99, position: 500}
metrics: [target_prob]
"""
    result = runner.invoke(app, ["validate", str(_config(tmp_path, body))])
    assert result.exit_code == 2, result.output
    found = _problems(result.output)
    assert len(found) == 2, result.output  # one line each, though both prompts have both problems
    assert "interventions[0].position  2 prompts (0, 1): position 500 is outside the prompt" in found[0]
    assert "interventions[0].head" in found[1] and "head 99 is out of range" in found[1]


def test_heads_are_checked_per_component_under_gqa(tiny_model_dir, tmp_path: Path) -> None:
    """Llama-style GQA: 4 query heads but 2 key/value heads; head 3 exists for one only."""
    model = str(tiny_model_dir("llama"))
    prompts = '  - {base: "the cat sat on the mat", target: " the"}\n'
    for component, ok in (("head_query_output", True), ("head_key_output", False)):
        body = f"""interventions:
  - {{kind: zero, component: {component}, layer: 0, head: 3, position: last}}
metrics: [target_prob]
"""
        path = tmp_path / f"{component}.yaml"
        path.write_text(f"name: g\nmodel: {{name: {model}}}\nprompts:\n{prompts}{body}")
        result = runner.invoke(app, ["validate", str(path)])
        assert (result.exit_code == 0) == ok, result.output
        if not ok:
            assert "head 3 is out of range: head_key_output has 2 heads (0..1)" in result.output


def _run(tmp_path: Path, path: Path) -> Path:
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "runs"), "--quiet"])
    assert result.exit_code == 0, result.output
    return Path(result.output.strip().splitlines()[-1])


def _rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    return sorted(rows, key=lambda r: r["cell"])


def test_layer_all_and_head_all_inside_an_intervention_equal_the_explicit_lists(tmp_path: Path) -> None:
    site = "kind: zero, component: head_attention_value_output, position: last"
    short = _config(tmp_path, f"interventions:\n  - {{{site}, layer: all, head: all}}\n", name="a.yaml")
    full = _config(
        tmp_path,
        f"interventions:\n  - {{{site}, layer: [0, 1, 2, 3], head: [0, 1, 2, 3]}}\n",
        name="b.yaml",
    )
    a, b = _rows(_run(tmp_path, short)), _rows(_run(tmp_path, full))
    assert [r["target_prob"] for r in a] == [r["target_prob"] for r in b]
    plain = _rows(_run(tmp_path, _config(tmp_path, "interventions: []\n", name="c.yaml")))
    assert all(x["target_prob"] != y["target_prob"] for x, y in zip(a, plain, strict=True))  # it did act


def test_kind_bound_to_a_sweep_axis_runs_each_kind(tmp_path: Path) -> None:
    site = "component: block_output, layer: 2, position: last"
    swept = _config(
        tmp_path,
        f"sweep: {{k: [zero, ScaleMe]}}\ninterventions:\n  - {{kind: $k, {site}, value: 0.5}}\n",
        name="bad.yaml",
    )
    bad = runner.invoke(app, ["validate", str(swept)])
    assert bad.exit_code == 2 and "sweep.k[1]" in bad.output and "unknown intervention kind" in bad.output
    swept.write_text(swept.read_text().replace("ScaleMe", "scale"))
    rows = _rows(_run(tmp_path, swept))
    for kind in ("zero", "scale"):
        alone = _config(
            tmp_path, f"interventions:\n  - {{kind: {kind}, {site}, value: 0.5}}\n", name=f"{kind}.yaml"
        )
        if kind == "zero":  # `value` is not read by zero: an error, not a silent no-op
            result = runner.invoke(app, ["validate", str(alone)])
            assert result.exit_code == 2 and "`value` is not used by kind 'zero'" in result.output
            alone.write_text(alone.read_text().replace(", value: 0.5", ""))
        expected = [r["target_prob"] for r in _rows(_run(tmp_path, alone))]
        got = [r["target_prob"] for r in rows if r["k"] == kind]
        # batches of different shapes: equal up to float32 summation order
        assert got == pytest.approx(expected, rel=1e-4), kind
    zero, scale = ([r["target_prob"] for r in rows if r["k"] == k] for k in ("zero", "scale"))
    assert zero != pytest.approx(scale, rel=1e-2)  # the axis really switched the kind


def test_target_logprob_is_the_log_softmax_of_the_models_own_logits(tmp_path: Path) -> None:
    """The metric added as one table row: checked against a plain forward pass, by hand."""
    import torch

    from ivx.model import loading as models

    body = """interventions:
  - {kind: scale, component: block_output, layer: 1, position: last, value: 0.5}
metrics: [target_prob, target_logprob]
output: {logits: none, plots: false}
"""
    run_dir = _run(tmp_path, _config(tmp_path, body))
    rows = _rows(run_dir)
    prompts = json.loads((run_dir / "summary.json").read_text())["prompts"]
    lm = models.load("ivx-toy")
    block = lm.model.transformer.h[1]

    def halve_last(module: object, args: object, output: object) -> object:
        hidden = (output[0] if isinstance(output, tuple) else output).clone()  # [1, pos, d_model]
        hidden[:, -1] *= 0.5
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def logprob(ids: list[int], target: int) -> float:
        with torch.no_grad():
            logits = lm.model(input_ids=torch.tensor([ids])).logits[0, -1].double()
        return float(logits[target] - torch.logsumexp(logits, 0))

    for row, prompt in zip(rows, prompts, strict=True):
        ids = lm.tokenizer(prompt["base"])["input_ids"]
        assert len(ids) == len(prompt["tokens"])
        handle = block.register_forward_hook(halve_last)
        try:
            want = logprob(ids, prompt["target_ids"][0])
        finally:
            handle.remove()
        assert row["target_logprob"] == pytest.approx(want, abs=1e-4)
        assert row["target_prob"] == pytest.approx(math.exp(want), abs=1e-5)
        assert abs(logprob(ids, prompt["target_ids"][0]) - want) > 1e-2  # the edit mattered


def test_model_aware_problems_of_sweep_values_point_at_the_value(tmp_path: Path) -> None:
    body = """corrupt: {kind: noise, samples: 2}
sweep:
  layer: [0, 99]
  position: [1, 40]
interventions:
  - {kind: vanilla, component: block_output, layer: $layer, position: $position}
metrics: [indirect_effect]
"""
    path = _config(tmp_path, body)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    found = sorted(_problems(result.output))
    assert len(found) == 2, result.output
    assert found[0].startswith(f"{path}:8  sweep.layer[1]  $layer = 99 (bound to `layer`): layer 99 is out")
    assert found[1].startswith(
        f"{path}:9  sweep.position[1]  $position = 40 (bound to `position`): 2 prompts"
    )


def test_a_replace_corruption_with_no_same_length_subject_fails_before_any_cell(tmp_path: Path) -> None:
    """Two facts whose subjects tokenize to different lengths: no swap keeps either prompt's length.
    validate says so, and run says so before creating a run directory (it used to run every cell
    of the first corruption and fail on the second)."""
    body = """corrupt:
  - {kind: noise, positions: subject, samples: 2}
  - {kind: replace}
sweep: {layer: all, position: all}
interventions:
  - {kind: vanilla, component: block_output, layer: $layer, position: $position}
metrics: [target_prob]
"""
    path = _config(tmp_path, body.replace("Kelfyrar", "Kel"))
    head = HEAD.replace("MODEL", "ivx-toy").replace("Kelfyrar", "Kel Drav Orin Pell")
    path.write_text(head + body)
    for command in (["validate", str(path)], ["run", str(path), "--out", str(tmp_path / "runs")]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, result.output
        found = _problems(result.output)
        assert found and all(f"{path}:" in p and "  corrupt[1].kind  prompt " in p for p in found), found
        assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()
