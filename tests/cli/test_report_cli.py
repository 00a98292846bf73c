"""`ivx report RUNS_DIR` (index page), `ivx compare A B --html` (side by side, B − A) and the #27 fixes:
`ivx show` takes the name `ivx ls` prints; `ivx compare` refuses runs whose grids differ (exit 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ivx.cli.app import app
from ivx.results import runs
from tests.results.test_report_html import parse

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()
QUICK = ["-q", "--set", "prompts.limit=2", "--set", "output.plots=false"]


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    for name in ("activation_patching_heads", "path_patching"):
        result = runner.invoke(
            app, ["run", str(ROOT / "configs" / f"{name}.yaml"), "--out", str(out), *QUICK]
        )
        assert result.exit_code == 0, result.output
    return out


def run_named(root: Path, name: str) -> Path:
    return next(p for p in sorted(root.iterdir()) if p.name.endswith(name))


def test_show_accepts_the_name_ls_prints_and_the_experiment_name(runs_dir: Path) -> None:
    listed = runner.invoke(app, ["ls", str(runs_dir)])
    name = next(line.split()[0] for line in listed.output.splitlines() if "path_patching" in line)
    shown = runner.invoke(app, ["show", name, "--runs-dir", str(runs_dir)])
    assert shown.exit_code == 0, shown.output
    assert "path_patching" in shown.output and "status complete" in shown.output
    by_experiment = runner.invoke(app, ["show", "path_patching", "--runs-dir", str(runs_dir)])
    assert by_experiment.exit_code == 0 and name in by_experiment.output
    missing = runner.invoke(app, ["show", "no_such_run", "--runs-dir", str(runs_dir)])
    assert missing.exit_code == 2 and "ivx ls" in missing.output and "Traceback" not in missing.output


def test_compare_refuses_runs_whose_grids_differ(runs_dir: Path, tmp_path: Path) -> None:
    heads = run_named(runs_dir, "activation_patching_heads")
    trace = tmp_path / "other"
    shutil.copytree(heads, trace)
    summary = json.loads((trace / "summary.json").read_text())
    summary["axes"] = ["layer", "position"]  # another sweep over other axes
    (trace / "summary.json").write_text(json.dumps(summary))
    refused = runner.invoke(app, ["compare", str(heads), str(trace)])
    assert (
        refused.exit_code == 2 and "grids differ" in refused.output and "['layer', 'head']" in refused.output
    )
    summary["axes"] = ["layer", "head"]
    summary["grid"] = [e for e in summary["grid"] if e["layer"] != 3]  # same axes, fewer points
    (trace / "summary.json").write_text(json.dumps(summary))
    refused = runner.invoke(app, ["compare", str(heads), str(trace)])
    assert refused.exit_code == 2 and "4 of A" in refused.output and "layer=3" in refused.output


def test_compare_html_shows_a_b_and_their_difference(runs_dir: Path, tmp_path: Path) -> None:
    a, b = run_named(runs_dir, "activation_patching_heads"), run_named(runs_dir, "path_patching")
    out = tmp_path / "diff.html"
    result = runner.invoke(app, ["compare", str(a), str(b), "--html", "--out", str(out)])
    assert result.exit_code == 0, result.output
    page, data = parse(out)
    grid_a, grid_b = (json.loads((r / "summary.json").read_text())["grid"] for r in (a, b))
    for metric in ("logit_diff_norm", "logit_diff"):
        figs = {f["id"]: f for f in data["figures"]}
        assert {f"A-{metric}", f"B-{metric}", f"diff-{metric}"} <= set(figs)
        assert figs[f"A-{metric}"]["layout"]["coloraxis"] == figs[f"B-{metric}"]["layout"]["coloraxis"]
        z = figs[f"diff-{metric}"]["data"][0]["z"]
        heads = figs[f"diff-{metric}"]["data"][0]["x"]
        layers = figs[f"diff-{metric}"]["data"][0]["y"]
        for ea in grid_a:
            eb = next(e for e in grid_b if (e["layer"], e["head"]) == (ea["layer"], ea["head"]))
            cell = z[layers.index(str(ea["layer"]))][heads.index(str(ea["head"]))]
            assert cell == pytest.approx(eb[metric] - ea[metric])
    assert "compare" in page.ids


def test_report_runs_dir_writes_an_index_linking_every_report(runs_dir: Path) -> None:
    result = runner.invoke(app, ["report", str(runs_dir)])
    assert result.exit_code == 0, result.output
    index = (runs_dir / "index.html").read_text()
    for row in runs.listing(runs_dir):
        assert (
            f"href='{row['run']}/report.html'" in index and (runs_dir / row["run"] / "report.html").is_file()
        )
        summary = json.loads((runs_dir / row["run"] / "summary.json").read_text())
        best = max(e["logit_diff_norm"] for e in summary["grid"])
        assert f"max logit_diff_norm {best:.6g}" in index  # the key metric, recomputed
    assert index.count("<tr>") == 1 + 2 and "complete" in index


def test_check_comparable_needs_a_shared_metric() -> None:
    a = {"axes": ["layer"], "metrics": ["iia"], "grid": [{"layer": 0, "iia": 1.0}]}
    b = {"axes": ["layer"], "metrics": ["target_prob"], "grid": [{"layer": 0, "target_prob": 0.5}]}
    with pytest.raises(runs.CompareError, match="no metric in common"):
        runs.check_comparable(a, b)
