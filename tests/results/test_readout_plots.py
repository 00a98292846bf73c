"""The readout figures of a sweep draw one panel per grid point, and every drawn array equals the
numbers of readout.csv: the lens as the mean over prompts with positions aligned from the end,
DLA's heads as the mean per head. Computed from readout.csv alone (not from the summary)."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import torch

from ivx.model import loading as models
from ivx.results import readout_plots, readouts
from tests.methods.readout_oracles import PROMPTS, run_readout

SWEEP = {"layer": [0, 1]}
IV = {"kind": "zero", "component": "mlp_output", "layer": "$layer", "position": -1}


def _csv(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "readout.csv").open() as fh:
        return list(csv.DictReader(fh))


def _panels(fig: Any) -> list[torch.Tensor]:
    """The heatmap drawn in every panel, in panel order."""
    return [torch.tensor(ax.images[0].get_array().data).double() for ax in fig.axes if ax.images]


@pytest.fixture(scope="module")
def gpt2(tiny_model_dir) -> Any:
    return models.load(str(tiny_model_dir("gpt2")))


def test_lens_panels_are_csv_means_aligned_from_the_end(gpt2: Any, tmp_path: Path) -> None:
    rows, summary, run_dir = run_readout(
        gpt2, tmp_path, "logit_lens", PROMPTS, interventions=[IV], sweep=SWEEP
    )
    table = _csv(run_dir)
    lengths: dict[str, int] = defaultdict(int)
    for r in table:
        lengths[r["cell"]] = max(lengths[r["cell"]], int(r["position"]) + 1)
    shortest = min(lengths.values())
    n_sites = len(summary["readout"]["sites"])
    want = []
    for layer in SWEEP["layer"]:
        grid = torch.zeros(n_sites, shortest, dtype=torch.float64)
        mine = [r for r in table if r["point.layer"] == str(layer)]
        cells = {r["cell"] for r in mine}
        for r in mine:
            back = lengths[r["cell"]] - int(r["position"])  # 1 = the last token
            if back <= shortest:
                grid[int(r["layer"]) + 1, shortest - back] += float(r["target_prob"]) / len(cells)
        want.append(grid)
    tokens = {p["prompt_index"]: p["tokens"] for p in summary["prompts"]}
    drawn = _panels(readout_plots.lens_figure(summary["readout"], rows, tokens))
    assert len(drawn) == len(SWEEP["layer"]) == 2
    for got, expected in zip(drawn, want, strict=True):
        assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(drawn[0], drawn[1], atol=1e-4)  # the two points differ
    lines = readouts.table_text(summary).splitlines()  # the terminal table: one column per point
    assert lines[2].split() == ["site", "layer=0", "layer=1"]
    for s, line in enumerate(lines[3:]):
        got_values = [float(v) for v in line.split()[1:]]
        assert got_values == pytest.approx([float(w[s, -1]) for w in want], abs=5e-4)


def test_dla_panels_are_csv_means(gpt2: Any, tmp_path: Path) -> None:
    rows, summary, run_dir = run_readout(gpt2, tmp_path, "dla", PROMPTS, interventions=[IV], sweep=SWEEP)
    heads = [r for r in _csv(run_dir) if r["component"] == "head"]
    want = []
    for layer in SWEEP["layer"]:
        mine = [r for r in heads if r["point.layer"] == str(layer)]
        grid = torch.zeros(1 + max(int(r["layer"]) for r in mine), 1 + max(int(r["head"]) for r in mine))
        for r in mine:
            grid[int(r["layer"]), int(r["head"])] += float(r["contribution"])
        want.append(grid.double() / len({r["cell"] for r in mine}))
    drawn = _panels(readout_plots.dla_figure(summary["readout"]))
    assert len(drawn) == 2
    for got, expected in zip(drawn, want, strict=True):
        assert torch.allclose(got, expected, atol=1e-6)


def test_panels_are_capped_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    """More grid points than MAX_POINTS: the first MAX_POINTS are drawn and the title says so."""
    monkeypatch.setattr(readout_plots, "MAX_POINTS", 2)
    point = {"heads": [[0.5, -0.5]], "mlp": [0.1], "mlp_se": [0.0], "embed": 0.0, "embed_se": 0.0}
    point |= {"attn_bias": [0.0], "bias": 0.0, "total": 0.1, "logit": 0.1, "direction": ["target"], "n": 1}
    n = readout_plots.MAX_POINTS + 3
    section = {"points": [{**point, "point": {"coef": k}} for k in range(n)]}
    fig = readout_plots.dla_figure(section)
    assert len(_panels(fig)) == readout_plots.MAX_POINTS
    assert f"first {readout_plots.MAX_POINTS} of {n} grid points" in fig.texts[0].get_text()
