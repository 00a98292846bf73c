"""The Python API's errors name what exists: unknown tensors, unknown metrics (issue #27)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ivx


def _run_dir(tmp_path: Path, tensors: dict[str, list[float]] | None) -> Path:
    import torch
    from safetensors.torch import save_file

    (tmp_path / "manifest.json").write_text(json.dumps({"status": "complete"}))
    grid = [{"layer": 0, "n": 2, "target_prob": 0.25}, {"layer": 1, "n": 2, "target_prob": 0.5}]
    summary = {"name": "t", "metrics": ["target_prob"], "axes": ["layer"], "grid": grid}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    if tensors is not None:
        save_file({k: torch.tensor(v) for k, v in tensors.items()}, str(tmp_path / "tensors.safetensors"))
    return tmp_path


def test_missing_tensor_names_the_keys_and_the_setting(tmp_path: Path) -> None:
    run = ivx.load_run(_run_dir(tmp_path, {"cell0": [1.0, 2.0], "cell1": [3.0]}))
    with pytest.raises(KeyError) as info:
        run.tensors["clean.prompt0"]
    message = str(info.value)
    assert "'clean.prompt0'" in message and "cell0, cell1" in message and "output.logits" in message
    assert run.tensors["cell1"].tolist() == [3.0]


def test_no_tensors_at_all_says_so(tmp_path: Path) -> None:
    run = ivx.load_run(_run_dir(tmp_path, None))
    with pytest.raises(KeyError, match="saved no tensors.*output.logits"):
        run.tensors["clean.prompt0"]


def test_plot_of_an_unknown_metric_raises_with_the_metrics(tmp_path: Path) -> None:
    run = ivx.load_run(_run_dir(tmp_path, None))
    with pytest.raises(KeyError, match="'nonexistent'.*metrics: target_prob"):
        run.plot("nonexistent")
    figure = run.plot("target_prob")
    assert figure is not None
    assert [round(y, 6) for y in figure.axes[0].lines[0].get_ydata()] == [0.25, 0.5]
