"""The one resolver: `layer: all`, `head: all`, `kind: $axis`, per-component `sweep: head: all`,
sweep values reported at the sweep's line, and the fields each command cannot honour."""

from __future__ import annotations

from pathlib import Path

import pytest

from ivx.core.errors import ConfigError
from ivx.plan import grid as plan
from tests.plan.test_plan import FakeInfo, load, prompt


def edits_of(tmp_path: Path, body: str, mode: plan.Mode = "run") -> list[plan.Cell]:
    return list(plan.expand(load(tmp_path, body), FakeInfo(), [prompt(0, 6)], mode).cells)


def problems_of(tmp_path: Path, body: str, mode: plan.Mode = "run") -> list[str]:
    with pytest.raises(ConfigError) as err:
        plan.expand(load(tmp_path, body), FakeInfo(), [prompt(0, 6, src=6)], mode)
    return [p.format() for p in err.value.problems]


def test_layer_all_inside_an_intervention_is_every_layer(tmp_path: Path) -> None:
    (cell,) = edits_of(tmp_path, "interventions: [{kind: zero, layer: all, position: last}]")
    (listed,) = edits_of(tmp_path, "interventions: [{kind: zero, layer: [0, 1, 2, 3], position: last}]")
    assert [e.layer for e in cell.edits] == [0, 1, 2, 3]
    assert cell.edits == listed.edits


def test_head_all_is_every_head_of_that_component(tmp_path: Path) -> None:
    body = "interventions: [{kind: zero, component: %s, head: all, position: last}]"
    (query,) = edits_of(tmp_path, body % "head_attention_value_output")
    (key,) = edits_of(tmp_path, body % "head_key_output")
    assert query.edits[0].heads == (0, 1, 2, 3)  # n_heads
    assert key.edits[0].heads == (0, 1)  # n_kv_heads (GQA)
    (unset,) = edits_of(tmp_path, "interventions: [{kind: zero, component: head_key_output, position: last}]")
    assert unset.edits == key.edits


def test_kind_bound_to_a_sweep_axis(tmp_path: Path) -> None:
    cells = edits_of(
        tmp_path,
        """
        sweep: {k: [zero, vanilla, scale]}
        interventions: [{kind: $k, layer: 1, position: last, value: 0.5}]
        """,
    )
    assert [c.axes()["k"] for c in cells] == ["zero", "vanilla", "scale"]
    assert [(e.kind, e.source, e.source_positions) for c in cells for e in c.edits] == [
        ("zero", "none", ()),
        ("vanilla", "base", (5,)),
        ("scale", "none", ()),
    ]


def test_sweep_head_all_expands_per_component(tmp_path: Path) -> None:
    body = """
        sweep: {c: [head_attention_value_output, head_key_output], h: all}
        interventions: [{kind: zero, component: $c, head: $h, position: last}]
        """
    cells = edits_of(tmp_path, body)
    points = [(c.axes()["c"], c.axes()["h"]) for c in cells]
    assert points == [("head_attention_value_output", h) for h in range(4)] + [
        ("head_key_output", h) for h in range(2)
    ]
    assert all(c.edits[0].heads == (c.axes()["h"],) for c in cells)
    assert plan.count(load(tmp_path, body), FakeInfo(), [prompt(0, 6)]) == len(cells) == 6


def test_a_bad_sweep_value_is_reported_at_the_sweep_line(tmp_path: Path) -> None:
    found = problems_of(
        tmp_path,
        """
        sweep:
          layer: [0, 9]
        interventions:
          - {kind: zero, layer: $layer, position: last}
        """,
    )
    assert found == [
        f"{tmp_path / 'e.yaml'}:5  sweep.layer[1]  $layer = 9 (bound to `layer`): "
        "layer 9 is out of range: the model has 4 layers (0..3)"
    ]


@pytest.mark.parametrize(
    ("mode", "body", "where"),
    [
        # without a `train:` section the config check names the kind (with one, the plan names `bundle`)
        ("run", "{kind: low_rank_rotated_space, low_rank_dimension: 2}", "interventions[0].kind"),
        ("run", "{kind: addition, vector: v.pt, on: generated}", "interventions[0].on"),
        ("generate", "{kind: vanilla, on: generated}", "interventions[0].on"),
        ("generate", "{kind: vanilla, sever: mlp_output}", "interventions[0].sever"),
        ("train", "{kind: vanilla}", "interventions[0].kind"),
    ],
)
def test_fields_a_command_cannot_honour_are_problems(
    tmp_path: Path, mode: plan.Mode, body: str, where: str
) -> None:
    found = problems_of(tmp_path, f"interventions:\n  - {body}\n", mode)
    assert len(found) == 1 and f"e.yaml:4  {where}  " in found[0], found


def test_train_mode_needs_source_and_target_in_every_record(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        "train: {}\ninterventions: [{kind: low_rank_rotated_space, low_rank_dimension: 2, position: last}]",
    )
    with pytest.raises(ConfigError) as err:
        plan.expand(cfg, FakeInfo(), [prompt(0, 6, src=6), prompt(1, 6)], "train")
    assert [p.message for p in err.value.problems] == [
        "record 1 needs `source` and `target` (the counterfactual answer)"
    ]
    cells = plan.expand(cfg, FakeInfo(), [prompt(0, 6, src=6)], "train").cells
    (edit,) = cells[0].edits
    assert edit.trainable and edit.source == "source" and edit.positions == edit.source_positions == (5,)
