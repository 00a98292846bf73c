"""Terminal tables and sweep figures read back: values, config order, colour scales, no truncation."""

from __future__ import annotations

import math

import pytest

from ivx.results import gridplot, runs, train_report
from ivx.results import tables as report


def grid_2d() -> dict:
    """A layer × head summary with distinct means (layer*10 + head) and some signed values."""
    grid = []
    for layer in range(3):
        for head in (2, 0, 1):  # config order, deliberately unsorted
            grid.append(
                {
                    "layer": layer,
                    "head": head,
                    "n": 4,
                    "logit_diff": layer * 10.0 + head - 5,
                    "logit_diff_norm": (layer * 3 + head) / 8,
                    "logit_diff_stderr": 0.1,
                }
            )
    return {
        "name": "t",
        "axes": ["layer", "head"],
        "metrics": ["logit_diff", "logit_diff_norm"],
        "grid": grid,
    }


def grid_1d() -> dict:
    positions = [0, "subject_first", "last"]  # config order (sorting by str would give 0, last, ...)
    grid = [
        {"position": p, "n": 5, "target_prob": 0.1 * (i + 1), "target_prob_stderr": 0.01 * (i + 1)}
        for i, p in enumerate(positions)
    ]
    return {"name": "t", "axes": ["position"], "metrics": ["target_prob"], "grid": grid}


def test_matrix_axes_put_heads_or_layers_across() -> None:
    assert report.matrix_axes(["layer", "head"]) == ("layer", "head", [])
    assert report.matrix_axes(["component", "layer", "position"]) == ("position", "layer", ["component"])
    assert report.matrix_axes(["component", "layer"]) == ("component", "layer", [])
    assert report.matrix_axes(["a", "b", "c"]) == ("a", "c", ["b"])


def test_head_table_holds_the_grid_means_in_config_order() -> None:
    summary = grid_2d()
    text = report.table(summary, width=200)
    lines = text.splitlines()
    assert lines[0].startswith("logit_diff_norm by layer × head")  # the normalized metric first
    assert lines[1].split()[-3:] == ["2", "0", "1"]
    row2 = lines[4].split()
    assert row2[0] == "2"
    assert [float(v) for v in row2[1:]] == pytest.approx([(6 + h) / 8 for h in (2, 0, 1)], abs=5e-4)


def test_narrow_terminal_wraps_columns_never_cuts() -> None:
    summary = grid_2d()
    text = report.table(summary, width=22)
    assert "…" not in text
    assert all(len(line) <= 22 for line in text.splitlines()[1:])
    cells = [tok for line in text.splitlines()[1:] for tok in line.split()[1:]]
    for entry in summary["grid"]:  # every mean appears somewhere
        assert f"{entry['logit_diff_norm']:.3f}" in cells


def test_line_table_and_point_table() -> None:
    text = report.table(grid_1d(), width=200).splitlines()
    assert [line.split()[0] for line in text[1:]] == ["0", "subject_first", "last"]
    assert text[2].split()[1:3] == ["0.200", "0.020"]
    point = {
        "axes": [],
        "metrics": ["target_prob", "target_rank"],
        "grid": [{"n": 100, "target_prob": 0.975, "target_prob_stderr": 0.01, "target_rank": 0.0}],
    }
    out = report.table(point)
    assert "target_prob" in out and "0.975" in out and "target_rank" in out


def test_line_figure_draws_means_and_errors_in_config_order() -> None:
    summary = grid_1d()
    fig = gridplot.figure(summary, "target_prob")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "subject_first", "last"]
    heights = [bar.get_height() for bar in ax.patches]
    assert heights == pytest.approx([0.1, 0.2, 0.3])
    assert "fitted to the data" in ax.get_ylabel()  # bars start at 0; the axis says how it is scaled


def test_heatmap_array_equals_summary_means_and_signed_scale_is_centred() -> None:
    summary = grid_2d()
    fig = gridplot.figure(summary, "logit_diff")
    ax = fig.axes[0]
    data = ax.images[0].get_array()
    for entry in summary["grid"]:
        i = entry["layer"]
        j = [2, 0, 1].index(entry["head"])
        assert data[i, j] == pytest.approx(entry["logit_diff"])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2", "0", "1"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1", "2"]
    norm = ax.images[0].norm
    assert norm.vmin == pytest.approx(-norm.vmax) and norm.vmax == pytest.approx(
        max(abs(e["logit_diff"]) for e in summary["grid"])
    )


def test_normalized_scale_spans_zero_to_one_without_offset() -> None:
    summary = grid_2d()
    for entry in summary["grid"]:  # values near 1 that an offset formatter would show as +1
        entry["logit_diff_norm"] = 1.0 + entry["layer"] * 0.001
    fig = gridplot.figure(summary, "logit_diff_norm")
    norm = fig.axes[0].images[0].norm
    assert (norm.vmin, norm.vmax) == (0.0, pytest.approx(1.002))
    fig.canvas.draw()
    bar_axis = fig.axes[-1].yaxis
    assert bar_axis.get_major_formatter().get_offset() == ""
    ticks = [float(t.get_text().replace("−", "-")) for t in bar_axis.get_ticklabels() if t.get_text()]
    assert min(ticks) == pytest.approx(0.0) and max(ticks) >= 0.8


def test_signed_normalized_metric_is_diverging_at_zero() -> None:
    norm, cmap = gridplot.norm_for("logit_diff_norm", [-0.001, 0.6])
    assert (norm.vmin, norm.vmax) == (-1.0, 1.0) and cmap == "RdBu_r"
    norm, _ = gridplot.norm_for("indirect_effect", [-0.2, 0.5])
    assert norm(0.0) == pytest.approx(0.5)


def test_compare_reports_b_minus_a_per_grid_point() -> None:
    a = grid_2d()
    b = grid_2d()
    for entry in b["grid"]:
        entry["logit_diff"] += entry["head"]
    header, rows = runs.compare(a, b)
    assert header[:2] == ["layer", "head"]
    col = header.index("logit_diff A") + 2
    for row, entry in zip(rows, a["grid"], strict=True):
        assert float(row[col]) == pytest.approx(entry["head"])


def das_summary() -> dict:
    points = []
    for i, (layer, pos) in enumerate((lay, p) for lay in (1, 3) for p in (0, "subject_first", "last")):
        points.append(
            {
                "point": i,
                "layer": layer,
                "position": pos,
                "low_rank_dimension": 32,
                "iia": i / 10,
                "control_iia": i / 100,
                "train_iia": i / 10,
            }
        )
    return {
        "points": points,
        "best_point": 5,
        "best_iia": 0.5,
        "axes": ["layer", "position", "low_rank_dimension"],
    }


def test_iia_table_has_controls_beside_iia_and_names_the_best_point() -> None:
    text = train_report.iia_table(das_summary(), width=200).splitlines()
    assert text[1].split()[-2:] == ["1", "3"]
    assert [line.split()[0] for line in text[2:5]] == ["0", "subject_first", "last"]
    assert text[4].split()[1:] == ["0.200", "(0.020)", "0.500", "(0.050)"]
    assert "best: point 5 (layer=3, position=last" in text[-1]


def test_das_figures_keep_config_order_and_label_every_line() -> None:
    summary = das_summary()
    fig = train_report.iia_figure(summary)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "subject_first", "last"]
    assert ax.images[0].get_array()[2, 1] == pytest.approx(0.5)
    history = [
        {"point": p["point"], "epoch": e, "loss": 1.0 / (e + 1), "iia": p["iia"]}
        for p in summary["points"]
        for e in range(3)
    ]
    fig = train_report.training_figure(history, summary["points"], summary["axes"])
    titled = [a for a in fig.axes if a.get_title()]
    assert len(titled) == 6 and titled[0].get_title() == "position=0, layer=1"
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["held-out IIA", "control IIA", "training loss"]
    assert not math.isnan(titled[5].lines[0].get_ydata()[0])


def test_null_means_from_json_are_gaps_not_errors() -> None:
    summary = grid_1d()
    summary["grid"][1]["target_prob"] = None  # NaN written to summary.json
    fig = gridplot.figure(summary, "target_prob")
    heights = [bar.get_height() for bar in fig.axes[0].patches]
    assert heights[0] == pytest.approx(0.1) and math.isnan(heights[1])
    two = grid_2d()
    two["grid"][0]["logit_diff"] = None
    data = gridplot.figure(two, "logit_diff").axes[0].images[0].get_array()
    assert data.mask[0, 0] or math.isnan(data[0, 0])
