"""The static figures fixed for #28: panel grids wrap, 1-D axes fitted to the data and saying so,
titles naming what was patched into what, raw effects centred on the corrupted baseline, DAS's
IIA title; and the report's trace, DAS and verification figures read back against their input."""

from __future__ import annotations

from pathlib import Path

import pytest

from ivx.results import gridplot, plots, train_report
from ivx.results.report import tracefigs
from tests.results.test_report import das_summary, grid_2d


def test_twelve_trace_panels_wrap_into_a_grid(tmp_path: Path) -> None:
    import matplotlib.image

    fig, axes = gridplot.panel_grid(12, (3.0, 2.0))
    rows = sorted({round(ax.get_position().y0, 3) for ax in axes})
    cols = sorted({round(ax.get_position().x0, 3) for ax in axes})
    assert (len(rows), len(cols)) == (3, 4) and fig.get_figwidth() < 15  # 4 × 3, not a 12-wide strip
    comps = [f"head_query_output | head={h}" for h in range(5)]
    path = tmp_path / "panels.png"
    plots._panels(path, "t", {c: [[0.1, 0.2], [0.3, 0.4]] for c in comps}, ["a", "b"], "indirect_effect", 2)
    height, width = matplotlib.image.imread(str(path)).shape[:2]
    assert width < 1700 and height > 300  # five panels: a row of four and one below


def test_one_d_sweep_axis_is_fitted_to_small_effects() -> None:
    means = [0.001, 0.012, -0.003, 0.004]
    summary = {
        "name": "heads",
        "axes": ["head"],
        "grid": [
            {"head": h, "n": 50, "logit_diff_norm": m, "logit_diff_norm_stderr": 0.002}
            for h, m in enumerate(means)
        ],
    }
    ax = gridplot.figure(summary, "logit_diff_norm").axes[0]
    lo, hi = ax.get_ylim()
    assert lo < -0.005 and hi > 0.014 and hi - lo < 0.05  # not 0..1: a 0.01 effect stays visible
    assert "fitted to the data" in ax.get_ylabel() and "n=50" in ax.get_ylabel()


def test_titles_name_what_was_patched_into_what() -> None:
    iv = {
        "kind": "vanilla",
        "component": "head_attention_value_output",
        "layer": "$layer",
        "head": "$head",
        "position": "all",
        "source": "source",
        "receivers": [{"component": "mlp_input", "layer": 0, "position": "last"}],
    }
    what = gridplot.describe([iv], corrupted=False)
    assert "head_attention_value_output" in what and what.endswith("into mlp_input L0 at last")
    fig = gridplot.figure(grid_2d(), "logit_diff", what)
    title = fig._suptitle.get_text().replace("\n", " ").replace("\\$", "$")
    assert "into mlp_input L0 at last" in title and "from the source prompt's run" in title
    plain = gridplot.describe([{**iv, "receivers": None}], corrupted=True)
    assert plain.endswith("into the corrupted run")


def test_raw_logit_diff_heatmap_is_centred_on_the_corrupted_baseline() -> None:
    summary = grid_2d()
    summary["prompts"] = [{"corrupted": {"logit_diff": v}} for v in (-11.0, -9.0)]
    norm = gridplot.figure(summary, "logit_diff").axes[0].images[0].norm
    assert (norm.vmin + norm.vmax) / 2 == pytest.approx(-10.0)
    values = [e["logit_diff"] for e in summary["grid"]]
    assert norm.vmax == pytest.approx(-10.0 + max(abs(v + 10.0) for v in values))


def test_das_iia_figure_title_has_no_prompt_count_of_zero() -> None:
    fig = train_report.iia_figure(das_summary())
    title = fig._suptitle.get_text()
    assert "over 0 prompts" not in title and "iia per grid point" in title


def test_trace_panels_carry_the_trace_means_and_counts() -> None:
    trace = {
        "metric": "indirect_effect",
        "n_layers": 2,
        "facts": 3,
        "p_clean": 0.9,
        "p_corrupted": 0.1,
        "components": {
            "mlp_output": {
                "by_category": {"subject_last": {"mean": [0.5, 0.25], "stderr": [0.1, 0.05], "n": [3, 2]}},
                "by_position": {
                    "labels": ["a", "b"],
                    "mean": [[0.1, 0.2], [0.3, 0.4]],
                    "stderr": [[0] * 2] * 2,
                },
            }
        },
    }
    figs = {f["id"]: f for f in tracefigs.trace_figures({"name": "t", "trace": trace})}
    cat = figs["trace-by_category-main"]["data"][0]
    assert cat["z"] == [[0.5, 0.25]] and cat["y"] == ["last subject token"]
    assert "indirect_effect: 0.25" in cat["hovertext"][0][1] and "n=2" in cat["hovertext"][0][1]
    axis = figs["trace-by_category-main"]["layout"]["coloraxis"]
    assert cat["coloraxis"] == "coloraxis" and axis["cmin"] == -axis["cmax"]  # signed: diverging at 0
    unit = tracefigs.trace_figures({"name": "t", "trace": {**trace, "metric": "target_prob"}})[0]["data"][0]
    assert unit["colorscale"][-1][1] == "#00441b" and unit["zmin"] == 0.0  # MLPs green, as in ROME
    pos = figs["trace-by_position-main"]["data"][0]
    assert pos["z"] == [[0.1, 0.2], [0.3, 0.4]] and pos["y"] == ["0 a", "1 b"]


def test_das_and_verification_figures_read_back() -> None:
    summary = das_summary()
    figs = {f["id"]: f for f in tracefigs.extra_figures(summary)}
    grid = figs["das-iia-grid"]
    real = grid["data"][0]
    point = next(p for p in summary["points"] if (p["layer"], p["position"]) == (3, "last"))
    assert real["z"][real["y"].index("last")][real["x"].index("3")] == pytest.approx(point["iia"])
    assert any("placebo" in t["name"] for t in grid["data"])  # the control beside the real IIA
    verification = {
        "ranked_by": "indirect_effect",
        "metrics": {"indirect_effect": {"pearson": 0.86, "spearman": 0.93, "top_k_overlap": 1.0}},
        "verified": [{"cell": 1, "estimate": 0.4, "exact": 0.2}, {"cell": 2, "estimate": 0.1, "exact": 0.1}],
    }
    fig = tracefigs.extra_figures({"attribution_verification": verification})[0]
    assert fig["data"][0]["x"] == [0.2, 0.1] and fig["data"][0]["y"] == [0.4, 0.1]
    assert "Pearson 0.86" in fig["title"] and "Spearman 0.93" in fig["title"]
