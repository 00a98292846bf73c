"""The run-time estimate prices a plan with the cost model the run packs its cells with.

Structure, not wall time: the estimate's forwards equal what a real run's shortcut report says
it scheduled (same packing, same no-op cells, same cost model), doubling the prompts doubles the
per-cell parts, cells that enter at the last block are cheaper than cells that run every block,
and turning the shortcuts off in the config never makes a plan cheaper.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ivx.cli.app import app
from ivx.plan import estimate
from ivx.recipes import prepare

ROOT = Path(__file__).resolve().parents[2]
FACTS = [json.loads(line) for line in (ROOT / "configs" / "data" / "facts.jsonl").read_text().splitlines()]
runner = CliRunner()


def _config(tmp: Path, prompts: int = 4, sweep: str = "{layer: all, position: all}", extra: str = "") -> Path:
    """A causal-trace-shaped config on ivx-toy over the first `prompts` facts (prompt i repeats fact i % 4)."""
    records = "\n".join(f"  - {json.dumps(FACTS[i % 4])}" for i in range(prompts))
    path = tmp / f"c{prompts}_{abs(hash((sweep, extra)))}.yaml"
    path.write_text(
        f"""name: estimate
model: {{name: ivx-toy, dtype: float32}}
seed: 0
prompts:
{records}
corrupt: {{kind: noise, positions: subject, scale: 3.0, samples: 3}}
sweep: {sweep}
interventions:
  - {{kind: vanilla, component: mlp_output, layer: $layer, position: $position}}
metrics: [indirect_effect, target_prob]
output: {{logits: none, plots: false}}
{extra}"""
    )
    return path


def _seconds(path: Path, *overrides: str) -> estimate.Seconds:
    preps = prepare.prepare_all(path, tuple(overrides), weights=False, max_cells=None, mode="run")
    return estimate.seconds(preps)


def test_forwards_are_what_the_run_schedules(tmp_path: Path) -> None:
    """Same cost model, same no-op cells, same packing: the run's own report of its schedule."""
    path = _config(tmp_path, prompts=6)
    preps = prepare.prepare_all(path, (), weights=False, max_cells=None, mode="run")
    [prep] = preps
    cost = estimate.cost(prep)
    forwards, rows = estimate._scheduled(prep, cost)
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "runs"), "--quiet"])
    assert result.exit_code == 0, result.output
    run_dir = Path(result.output.strip().splitlines()[-1])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    report = manifest["shortcuts"]
    assert all(v["on"] for v in report["shortcuts"].values())  # what the estimate expects to engage
    assert report["cost"] == cost.to_dict()
    scheduled = sum(g["estimated_seconds"] for g in report["groups"])
    assert forwards == pytest.approx(scheduled, abs=1e-3 * len(report["groups"]))
    assert scheduled > 0
    ran = sum(g["cells"] - g["noop_cells"] for g in report["groups"])
    assert rows == ran * estimate.samples(prep)
    assert manifest["cells_noop"] == len(prep.plan.cells) - ran > 0


def test_doubling_the_prompts_doubles_the_per_cell_parts(tmp_path: Path) -> None:
    one, two = _seconds(_config(tmp_path, 4)), _seconds(_config(tmp_path, 8))
    assert two.start == one.start
    assert two.cells == pytest.approx(2 * one.cells)
    assert two.head == pytest.approx(2 * one.head)
    assert two.baselines == pytest.approx(2 * one.baselines, rel=0.5)
    # fuller batches share a forward's fixed cost: at most double, and not much less
    assert 1.6 * one.forwards <= two.forwards <= 2 * one.forwards + 1e-9
    assert 1.6 * (one.total - one.start) <= two.total - two.start <= 2 * (one.total - one.start) + 1e-9


def test_cells_entering_at_the_last_block_are_cheaper(tmp_path: Path) -> None:
    """Layer reuse: an MLP patched in the last block runs one block, in the first block all four."""
    first = _seconds(_config(tmp_path, sweep="{layer: [0], position: all}"))
    last = _seconds(_config(tmp_path, sweep="{layer: [3], position: all}"))
    assert last.cells == first.cells and last.head == first.head
    assert last.forwards < 0.5 * first.forwards
    assert last.total < first.total


def test_shortcuts_off_in_the_config_never_make_a_plan_cheaper(tmp_path: Path) -> None:
    path = _config(tmp_path)
    on = _seconds(path)
    for off in ("batch.layer_reuse=false", "batch.prefix_reuse=false", "batch.skip_noop=false"):
        assert _seconds(path, off).forwards > on.forwards, off
    # no-op cells need no forward: without the shortcut they all run
    plain = _seconds(path, "batch.prefix_reuse=false", "batch.layer_reuse=false", "batch.skip_noop=false")
    assert plain.forwards > _seconds(path, "batch.skip_noop=false").forwards
    assert _seconds(path, "output.logits=all").forwards == pytest.approx(plain.forwards)


def test_validate_prints_the_estimate_and_its_model(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(_config(tmp_path))])
    assert result.exit_code == 0, result.output
    assert "estimated with the run's cost model" in result.output
    assert "without exact shortcuts" not in result.output
