"""The kind table and the metric table: what they compute, and what the schema derives from them."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ivx.config import docs
from ivx.config import loader as config
from ivx.core import errors, interventions, metrics
from ivx.core.errors import ConfigError, Problem

LOGITS = [[1.0, 2.0, 0.5, -1.0], [0.0, 0.0, 3.0, 1.0], [0.2, -0.3, 0.1, 0.4]]
TARGET = [1, 2, -1]
FOIL = [0, -1, 3]


def _hand_logprob(row: list[float], token: int) -> float:
    return row[token] - math.log(sum(math.exp(v) for v in row))


def test_row_metrics_match_a_hand_computation_from_logits() -> None:
    clean = [[0.5, 0.5, 0.5, 0.5], [2.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]]
    values = metrics.row_values(
        torch.tensor(LOGITS), torch.tensor(TARGET), torch.tensor(FOIL), torch.tensor(clean)
    )
    for i, (row, t, f) in enumerate(zip(LOGITS, TARGET, FOIL, strict=True)):
        if t < 0:  # no target: every target metric is NaN, never a silent number
            for name in ("target_prob", "target_logprob", "target_logit", "target_rank", "logit_diff"):
                assert math.isnan(float(values[name][i])), name
        else:
            assert float(values["target_logprob"][i]) == pytest.approx(_hand_logprob(row, t), abs=1e-6)
            assert float(values["target_prob"][i]) == pytest.approx(math.exp(_hand_logprob(row, t)), abs=1e-7)
            assert float(values["target_logit"][i]) == row[t]
            assert float(values["target_rank"][i]) == sum(v > row[t] for v in row)
            if f >= 0:
                assert float(values["logit_diff"][i]) == pytest.approx(row[t] - row[f])
            else:
                assert math.isnan(float(values["logit_diff"][i]))
        p_clean = [math.exp(_hand_logprob(clean[i], k)) for k in range(4)]
        kl = sum(p * (_hand_logprob(clean[i], k) - _hand_logprob(row, k)) for k, p in enumerate(p_clean))
        assert float(values["kl"][i]) == pytest.approx(kl, abs=1e-6)


def test_cell_metrics_from_the_table() -> None:
    patched = {"target_prob": 0.5, "logit_diff": 1.0, "target_logprob": -0.7}
    corrupted = {"target_prob": 0.1, "logit_diff": -2.0}
    clean = {"target_prob": 0.9, "logit_diff": 4.0}
    names = ["indirect_effect", "indirect_effect_norm", "logit_diff_norm", "target_logprob", "top_k"]
    out = metrics.cell_values(names, patched, corrupted, clean)
    assert out["indirect_effect"] == pytest.approx(0.4)
    assert out["indirect_effect_norm"] == pytest.approx(0.4 / 0.8)
    assert out["logit_diff_norm"] == pytest.approx(3.0 / 6.0)
    assert out["target_logprob"] == -0.7
    assert "top_k" not in out  # not a number: rows get it from the logits separately


def test_every_fixed_kind_computes_its_documented_formula() -> None:
    base = torch.tensor([[1.0, -2.0, 3.0]])
    source = torch.tensor([[0.5, 0.25, -1.0]])
    expected = {
        "vanilla": source,
        "addition": base + 2.0 * source,
        "subtraction": base - 2.0 * source,
        "zero": torch.zeros_like(base),
        "noise": base + source,  # the caller passes the drawn noise as `source`
        "scale": base * 3.0,
        "collect": base,
        "set": 2.0 * source,
        "mean": source,  # the engine passes the reference mean as `source`
        "resample": source,  # ... or the other record's activation
    }
    fixed = {k for k, spec in interventions.KINDS.items() if not spec.trainable}
    assert fixed == set(expected)
    for kind, want in expected.items():
        got = interventions.for_kind(kind, value=3.0, coefficient=2.0)(base, source)
        assert torch.equal(got, want), kind
    with pytest.raises(ValueError, match="not a fixed"):
        interventions.for_kind("rotated_space", value=None, coefficient=1.0)


def test_reference_docs_list_every_kind_and_metric() -> None:
    text = docs.markdown().split("## Intervention kinds", 1)[1]
    for name, spec in interventions.KINDS.items():
        row = next(line for line in text.splitlines() if line.startswith(f"| `{name}` |"))
        assert all(field in row for field in spec.fields) and spec.description in row
    for name, m in metrics.METRICS.items():
        assert f"| `{name}` |" in text and m.description in text


def _write(tmp_path: Path, interventions_yaml: str, sweep: str = "{}", extra: str = "") -> Path:
    path = tmp_path / "exp.yaml"
    head = [
        "name: t",
        "model: {name: ivx-toy}",
        "prompts:",
        '  - {base: "The Zorvan Tower is located in the city of", target: " Trelin"}',
        f"sweep: {sweep}",
        "interventions:",
    ]
    path.write_text("\n".join(head) + "\n" + interventions_yaml + "metrics: [target_prob]\n" + extra)
    return path


def _problems(path: Path) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        config.load(path)
    return info.value.problems


def test_fields_a_kind_does_not_read_are_errors_at_their_line(tmp_path: Path) -> None:
    iv = (
        "  - kind: zero\n"
        "    layer: 0\n"
        "    coefficient: 2.0\n"
        "    temperature: [1.0, 0.1]\n"
        "    interchange_dim: 3\n"
        "    subspace: [0, 1]\n"
    )
    found = _problems(_write(tmp_path, iv))
    where = {(p.path, p.line) for p in found}
    assert where == {
        ("interventions[0].coefficient", 9),
        ("interventions[0].temperature", 10),
        ("interventions[0].interchange_dim", 11),
    }, found
    assert all("is not used by kind 'zero'" in p.message for p in found)


def test_kind_axis_accepts_a_field_that_some_bound_kind_reads(tmp_path: Path) -> None:
    iv = "  - {kind: $k, layer: 0, position: last, coefficient: 2.0}\n"
    cfg = config.load(_write(tmp_path, iv, sweep="{k: [addition, ZeroIntervention]}"))
    assert cfg.experiment.interventions[0].kind == "$k"
    found = _problems(_write(tmp_path, iv, sweep="{k: [vanilla, zero]}"))
    assert len(found) == 1 and "not used by kind 'vanilla', 'zero'" in found[0].message


def test_all_inside_an_intervention_is_accepted(tmp_path: Path) -> None:
    iv = "  - {kind: zero, component: head_attention_value_output, layer: all, head: all, position: last}\n"
    cfg = config.load(_write(tmp_path, iv))
    assert cfg.experiment.interventions[0].layer == "all" and cfg.experiment.interventions[0].head == "all"


def test_trainable_kinds_need_a_bundle_unless_the_config_trains(tmp_path: Path) -> None:
    iv = "  - {kind: low_rank_rotated_space, layer: 0, position: last, low_rank_dimension: 2}\n"
    (problem,) = _problems(_write(tmp_path, iv))
    assert problem.path == "interventions[0].kind" and "needs a trained `bundle`" in problem.message
    assert config.load(_write(tmp_path, iv, extra="train: {epochs: 1}\n"))


def test_problems_that_differ_only_by_prompt_collapse_with_a_count() -> None:
    same = [
        Problem(
            "f.yaml",
            9,
            "interventions[0].position",
            f"prompt {i}: position 40 is outside the prompt ({n} tokens)",
        )
        for i, n in [(0, 12), (1, 14), (2, 12)]
    ]
    other = Problem("f.yaml", 9, "interventions[0].head", "prompt 0: head 9 is out of range")
    (first, second) = errors.collapse(same + [other])
    assert first.message == "3 prompts (0, 1, 2): position 40 is outside the prompt (12–14 tokens)"
    assert second == other  # a single problem keeps its own words
