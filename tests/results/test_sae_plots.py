"""The SAE attribution figure draws the summary's numbers: top features and features vs error."""

from __future__ import annotations

from pathlib import Path

import pytest

from ivx.results import sae_plots

SITE = {
    "sae": "/x/saes/resid1",
    "component": "block_output",
    "layer": 1,
    "source": "source",
    "metric": "logit_diff",
    "top_features": [
        {"feature": 7, "position": 3, "logit_diff": 0.5, "prompts": 2},
        {"feature": 2, "position": 1, "logit_diff": -0.25, "prompts": 2},
    ],
    "by_position": [
        {"position": 0, "features": 0.0, "error": 0.0},
        {"position": 1, "features": -0.2, "error": 0.1},
        {"position": 3, "features": 0.6, "error": None},
    ],
    "error_nodes": [],
}


def test_figure_bars_are_the_summary_values() -> None:
    fig = sae_plots.figure(SITE)
    left, right = fig.axes[:2]
    assert [p.get_width() for p in left.patches] == [-0.25, 0.5]  # the largest at the top
    assert [t.get_text() for t in left.get_yticklabels()] == ["f2 @ 1", "f7 @ 3"]
    heights = [p.get_height() for p in right.patches]
    assert heights == pytest.approx([0.0, -0.2, 0.6, 0.0, 0.1, 0.0])  # features, then error (None → 0)
    assert "resid1" in fig._suptitle.get_text()


def test_write_names_one_file_per_site_and_label(tmp_path: Path) -> None:
    assert sae_plots.write(tmp_path, {"grid": []}) == []
    paths = sae_plots.write(
        tmp_path, {"sae_attribution": {"noise": {"sites": [SITE]}, "replace": {"sites": [SITE]}}}
    )
    assert [p.name for p in paths] == ["sae_attribution_noise_0.png", "sae_attribution_replace_0.png"]
    assert all(p.stat().st_size > 0 for p in paths)
