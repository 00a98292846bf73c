"""The sweep section (issue #27): zipped axes, named points, `$axis` in any field — the grid they
expand to and every problem located at the value, naming the axis and the field. Pure, no weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from ivx.config import sweep as sweeps
from ivx.core.errors import ConfigError
from ivx.plan import grid as plan
from tests.plan.test_plan import FakeInfo, load, prompt

SENDER = """
interventions:
  - kind: vanilla
    component: head_attention_value_output
    layer: $layer
    head: $head
    position: all
"""


def _points(tmp_path: Path, body: str, n_layers: int = 4) -> list[dict]:
    cells = plan.expand(load(tmp_path, body), FakeInfo(n_layers=n_layers), [prompt(0, 5)]).cells
    return [c.axes() for c in cells]


def _problems(tmp_path: Path, body: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        cfg = load(tmp_path, body)
        plan.expand(cfg, FakeInfo(), [prompt(0, 5)])
    return [f"{p.line} {p.path} {p.message}" for p in info.value.problems]


def test_zip_takes_axes_together_and_mixes_with_a_product_axis(tmp_path: Path) -> None:
    body = "sweep:\n  zip: {layer: [3, 1, 2], head: [1, 0, 3]}\n  pos: [0, -1]\n" + SENDER.replace(
        "position: all", "position: $pos"
    )
    points = _points(tmp_path, body)
    assert [(p["layer"], p["head"], p["pos"]) for p in points] == [
        (3, 1, 0), (3, 1, -1), (1, 0, 0), (1, 0, -1), (2, 3, 0), (2, 3, -1)
    ]  # fmt: skip
    assert [p["layer/head"] for p in points[::2]] == ["3/1", "1/0", "2/3"]
    cfg = load(tmp_path, body)
    assert plan.expand(cfg, FakeInfo(), [prompt(0, 5)]).axes == ("layer/head", "pos")
    assert plan.count(cfg, FakeInfo(), [prompt(0, 5), prompt(1, 6)]) == 12


def test_named_points_are_one_dimension_labelled_by_name(tmp_path: Path) -> None:
    body = (
        "sweep:\n  points:\n    - {name: top1, layer: 3, head: 1}\n    - {name: pair, layer: 1, head: [0, 2]}\n"
        "    - {layer: 2, head: 3}\n" + SENDER
    )
    cfg = load(tmp_path, body)
    cells = plan.expand(cfg, FakeInfo(), [prompt(0, 5)]).cells
    assert [c.axes()["point"] for c in cells] == ["top1", "pair", "layer=2,head=3"]
    assert [(e.layer, e.heads) for c in cells for e in c.edits] == [(3, (1,)), (1, (0, 2)), (2, (3,))]


def test_any_field_takes_an_axis_and_each_cell_gets_its_value(tmp_path: Path) -> None:
    body = """
        sweep: {coef: [0.5, 2.0], src: [base, source], rhead: [0, 3]}
        interventions:
          - kind: addition
            component: block_output
            layer: 1
            position: last
            coefficient: $coef
            contrast: {positive: a, negative: b}
          - kind: vanilla
            component: block_output
            layer: 0
            position: 1
            source: $src
            receivers: [{component: head_query_output, layer: 2, head: $rhead}]
        """
    cfg = load(tmp_path, body)
    assert cfg.experiment.interventions[1]._refs == [
        (("source",), "src"),
        (("receivers", 0, "head"), "rhead"),
    ]
    for point in [{"coef": 2.0, "src": "base", "rhead": 3}, {"coef": 0.5, "src": "source", "rhead": 0}]:
        first, second = (plan.substitute(iv, point) for iv in cfg.experiment.interventions)
        assert first.coefficient == point["coef"]
        assert second.source == point["src"] and second.receivers[0].head == point["rhead"]


def test_bad_values_are_reported_at_the_value_with_axis_and_field(tmp_path: Path) -> None:
    body = """
        sweep:
          coef: [1.0, lots]
          zip:
            layer: [1, 9]
            head: [0, 1]
        interventions:
          - kind: addition
            component: head_attention_value_output
            layer: $layer
            head: $head
            position: last
            coefficient: $coef
            contrast: {positive: a, negative: b}
        """
    found = _problems(tmp_path, body)
    assert any(
        p.startswith("5 sweep.coef[1] $coef = 'lots' (bound to `coefficient`)") and "valid number" in p
        for p in found
    ), found


def test_model_aware_problem_of_a_zipped_value_is_at_that_value(tmp_path: Path) -> None:
    body = "sweep:\n  zip:\n    layer: [1, 9]\n    head: [0, 1]\n" + SENDER
    [problem] = _problems(tmp_path, body)
    assert problem.startswith("5 sweep.zip.layer[1] $layer = 9 (bound to `layer`): layer 9 is out of range")


def test_receiver_axis_is_used_and_typos_are_named(tmp_path: Path) -> None:
    body = """
        sweep: {rhead: [0, 1]}
        interventions:
          - kind: vanilla
            component: block_output
            layer: 0
            position: 1
            receivers: [{component: head_query_output, layer: 2, head: $rhaed}]
        """
    found = _problems(tmp_path, body)
    assert any(
        "interventions[0].receivers[0].head unknown sweep axis '$rhaed'; did you mean $rhead?" in p
        for p in found
    )
    assert any("sweep.rhead sweep axis 'rhead' is not used" in p for p in found)


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ("zip: {layer: [1, 2], head: [0]}", "zipped axes need lists of one length (layer: 2, head: 1)"),
        (
            "zip: {layer: all, head: [0]}",
            "sweep.zip.layer must be a non-empty list (zipped axes take no 'all')",
        ),
        ("{layer: [1], zip: {layer: [2], head: [0]}}", "sweep axis 'layer' is set twice"),
        ("points: [{name: a, layer: 1, head: 0}, {name: a, layer: 2}]", "every point sets the same axes"),
        (
            "points: [{name: a, layer: 1, head: 0}, {name: a, layer: 2, head: 1}]",
            "names must be unique (a repeats)",
        ),
    ],
)
def test_shape_problems_name_the_axis(tmp_path: Path, sweep: str, message: str) -> None:
    body = ("sweep: " + sweep if sweep.startswith("{") else "sweep:\n  " + sweep) + "\n" + SENDER
    found = _problems(tmp_path, body)
    assert any(message in p for p in found), found


def test_value_paths_of_every_shape() -> None:
    sweep = {"coef": [1, 2], "zip": [{"layer": [1]}, {"head": [0]}], "points": [{"pos": 1}, {"pos": 2}]}
    assert sweeps.value_path(sweep, "coef", 1) == ("sweep", "coef", 1)
    assert sweeps.value_path(sweep, "head", 0) == ("sweep", "zip", 1, "head", 0)
    assert sweeps.value_path(sweep, "pos", 1) == ("sweep", "points", 1, "pos")
    assert sweeps.axis_values(sweep) == {"coef": [1, 2], "layer": [1], "head": [0], "pos": [1, 2]}
