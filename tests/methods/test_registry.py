"""The method table: every method runs with every corruption kind and resumes exactly, backend
tasks follow each method's own unit, and a combination a method does not support is a validate
error naming the reason (no silent gaps)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from ivx.cli.app import app
from ivx.config import loader
from ivx.methods import registry
from ivx.model import loading as models
from ivx.recipes import prepare
from ivx.recipes import run as experiment
from ivx.results import rundir

ROOT = Path(__file__).resolve().parents[2]
FACTS = str(ROOT / "configs" / "data" / "facts.jsonl")
IOI = str(ROOT / "configs" / "data" / "ioi.jsonl")
NOISE = {"kind": "noise", "positions": "subject", "samples": 2}
REPLACE = {"kind": "replace", "positions": "subject"}
CORRUPTIONS: dict[str, Any] = {"none": None, "noise": NOISE, "replace": REPLACE, "list": [NOISE, REPLACE]}
SENDER = {
    "kind": "vanilla",
    "component": "head_attention_value_output",
    "layer": "$layer",
    "head": 1,
    "position": "all",
    "receivers": [{"component": "block_output", "layer": -1, "position": "last"}],
}
RESTORE = {"kind": "vanilla", "component": "block_output", "layer": "$layer", "position": "$position"}


def config(method: str, corruption: str, limit: int = 4, **extra: Any) -> dict[str, Any]:
    """A small ivx-toy experiment of one method and one corruption (IOI source prompts without one)."""
    cfg: dict[str, Any] = {
        "name": f"{method}_{corruption}",
        "model": {"name": "ivx-toy"},
        "seed": 0,
        "prompts": {"file": IOI if corruption == "none" else FACTS, "limit": limit},
        "sweep": {"layer": "all", "position": [-1, -2]} if method != "path_patching" else {"layer": "all"},
        "interventions": [SENDER if method == "path_patching" else RESTORE],
        "metrics": ["indirect_effect", "target_prob"],
        "output": {"root": "runs", "logits": "none", "plots": False},
        **extra,
    }
    if CORRUPTIONS[corruption] is not None:
        cfg["corrupt"] = CORRUPTIONS[corruption]
    if method == "attribution":
        cfg.update(method="attribution", attribution={"qk_fix": False})
    return cfg


def write(tmp: Path, cfg: dict[str, Any]) -> Path:
    path = tmp / f"{cfg['name']}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def rows_of(run_dir: Path) -> list[str]:
    return sorted((run_dir / "results.jsonl").read_text().splitlines())


@pytest.fixture(scope="module")
def toy() -> Any:
    return models.load("ivx-toy")


METHODS = ["exact", "attribution", "path_patching"]


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_with_every_corruption(method: str, corruption: str, toy, tmp_path: Path) -> None:
    """Each (method, corruption) runs; its rows come from the one row builder (same keys, in order)
    and measure something: the patched metric differs from the run patched into somewhere."""
    path = write(tmp_path, config(method, corruption, limit=4, output={"root": str(tmp_path)}))
    prep = prepare.prepare_all(path, (), toy)[0]
    assert registry.of(prep.cfg).name == method
    run_dir = experiment.run(path, progress=False, lm=toy)
    rows = [json.loads(line) for line in rows_of(run_dir)]
    n_variants = 2 if corruption == "list" else 1
    assert len(rows) == n_variants * len(prep.plan.cells)
    axes = list(prep.plan.axes) + (["corruption"] if corruption == "list" else [])
    first = ["cell", "prompt_index", *[a for a in axes if a != "corruption"]]
    for row in rows:
        keys = list(row)
        assert keys[: len(first)] == first
        assert keys[len(first) : len(first) + 4] == [
            "indirect_effect",
            "target_prob",
            "p_clean",
            "p_corrupted",
        ]
        assert row.get("approximate", False) is (method == "attribution")
    assert max(abs(r["target_prob"] - r["p_corrupted"]) for r in rows) > 1e-4


@pytest.mark.parametrize("method", ["path_patching", "attribution"])
def test_interrupted_run_resumes_to_identical_rows(
    method: str, toy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that fails after its first batch (path patching: part of the first prompt's cells),
    resumed, gives the uninterrupted run's rows."""
    cfg = config(method, "noise", limit=4, batch={"size": 4}, output={"root": str(tmp_path / "whole")})
    whole = experiment.run(write(tmp_path, cfg), progress=False, lm=toy)
    cfg["output"]["root"] = str(tmp_path / "cut")
    path = write(tmp_path, cfg)
    real, calls = rundir.Results.append, []

    def append(self: rundir.Results, rows: list[dict[str, Any]]) -> None:
        calls.append(len(rows))
        if len(calls) == 2:
            raise RuntimeError("interrupted")
        real(self, rows)

    with monkeypatch.context() as patch:
        patch.setattr(rundir.Results, "append", append)
        with pytest.raises(RuntimeError, match="interrupted"):
            experiment.run(path, progress=False, lm=toy)
    run_dir = next((tmp_path / "cut").iterdir())
    partial = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert 0 < len(partial) == calls[0] < len(rows_of(whole))
    first_prompt = [r for r in rows_of(whole) if json.loads(r)["prompt_index"] == 0]
    if method == "path_patching":  # two cells (of 2 noise rows) per forward: stopped inside prompt 0
        assert {r["prompt_index"] for r in partial} == {0} and len(partial) < len(first_prompt)
    assert experiment.run(path, progress=False, lm=toy, resume=run_dir) == run_dir
    assert rows_of(run_dir) == rows_of(whole)


@pytest.mark.parametrize("method", ["path_patching", "attribution"])
def test_backend_tasks_are_whole_prompts(method: str, toy, tmp_path: Path) -> None:
    """Prompt-by-prompt methods are cut into tasks of whole prompts, each task run alone giving the
    local run's rows (so the Ray backend's rows are the local ones)."""
    import torch

    from ivx.recipes import backends

    path = write(tmp_path, config(method, "noise", limit=3))
    prep = prepare.prepare_all(path, (), toy)[0]
    cells = list(prep.plan.cells)

    def executed(task_cells: list) -> dict[int, str]:
        executor = backends.answers.executor(prep.cfg, prep.lm, prep.prompts, prep.plan)
        with torch.inference_mode():
            executor.prepare()
            return {
                o.cell.index: json.dumps(o.row) for b in registry.execute(executor, task_cells) for o in b
            }

    tasks = backends.tasks(backends.answers.executor(prep.cfg, prep.lm, prep.prompts, prep.plan), cells, 1)
    assert [sorted({c.prompt for c in task}) for task in tasks] == [[0], [1], [2]]
    alone: dict[int, str] = {}
    for task in reversed(tasks):
        alone.update(executed(task))
    assert alone == executed(cells)


def test_unsupported_combination_is_a_validate_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A method row that declares fewer backends or corruption kinds makes validate say why."""
    path = write(tmp_path, config("path_patching", "list", backend="ray"))
    assert loader.load(path, (), (registry.config_checks,))  # every combination is supported today
    rows = tuple(
        dataclasses.replace(m, backends=("local",), corruptions=("none", "noise"))
        if m.name == "path_patching"
        else m
        for m in registry.METHODS
    )
    monkeypatch.setattr(registry, "METHODS", rows)
    result = CliRunner().invoke(app, ["validate", str(path)], env={"COLUMNS": "400"})
    assert result.exit_code == 2, result.output
    assert f"{path}:" in result.output and "Traceback" not in result.output
    assert "path_patching runs on local only, not ray" in result.output
    assert "path_patching runs with corrupt: none, noise only, not replace" in result.output
