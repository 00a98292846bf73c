"""The causal-tracing window fits the model: ROME's 10 of 48 layers scaled to the depth (issue #27)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ivx.config.settings import Trace
from ivx.plan import grid as plan
from tests.plan.test_plan import FakeInfo, load, prompt

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("n_layers", "size"), [(2, 1), (4, 1), (12, 3), (24, 5), (28, 6), (48, 10), (96, 20)]
)
def test_default_window_is_romes_scaled_to_depth(n_layers: int, size: int) -> None:
    assert Trace().windows(n_layers) == {"mlp_output": size, "attention_output": size}


def test_explicit_window_is_kept() -> None:
    assert Trace(window={"mlp_output": 7}).windows(4) == {"mlp_output": 7}
    assert Trace(window={}).windows(48) == {}


def test_four_layer_model_restores_single_layers_under_trace(tmp_path: Path) -> None:
    body = """
        sweep: {component: [mlp_output, attention_output], layer: all}
        interventions:
          - {kind: vanilla, component: $component, layer: $layer, position: 1}
        trace: {}
        """
    cells = plan.expand(load(tmp_path, body), FakeInfo(n_layers=4), [prompt(0, 5)]).cells
    # before: ROME's 10 on 4 layers covered every layer in every cell (flat rows)
    assert [[e.layer for e in c.edits] for c in cells] == [[0], [1], [2], [3]] * 2
    deep = plan.expand(load(tmp_path, body), FakeInfo(n_layers=12), [prompt(0, 5)]).cells
    assert [e.layer for e in deep[5].edits] == [4, 5, 6]  # window 3: [l - 1, l + 2)


def test_run_states_the_window_on_the_terminal_and_in_summary(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ivx.cli.app import app

    sets = [
        "prompts.limit=1",
        "corrupt.samples=2",
        "sweep.component=[mlp_output]",
        "sweep.position=[last]",
        "interventions.0.window=null",
        "output.plots=false",
    ]
    args = ["run", str(ROOT / "configs" / "causal_trace.yaml"), "--out", str(tmp_path)]
    result = CliRunner().invoke(app, args + [a for s in sets for a in ("--set", s)])
    assert result.exit_code == 0, result.output
    assert "window: mlp_output 1 layer(s) of 4 restored per cell" in result.output
    run_dir = Path(result.output.strip().splitlines()[-1])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["trace"]["window"] == {"mlp_output": 1}
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    effects = [r["indirect_effect"] for r in sorted(rows, key=lambda r: r["layer"])]
    assert len(set(round(e, 6) for e in effects)) > 1  # not the flat row of an all-layer window
