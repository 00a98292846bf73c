"""The Ray backend: the same bits as the local backend, on a two-node local cluster, also when an
actor or the driver is killed mid-run. Cutting the local stream into tasks is checked without Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ivx.cli.app import app
from ivx.recipes import prepare

ROOT = Path(__file__).resolve().parents[2]
TRACE = ROOT / "configs" / "causal_trace.yaml"
PATCHING = ROOT / "configs" / "activation_patching.yaml"
PATHS = ROOT / "configs" / "path_patching.yaml"
ATTRIBUTION = ROOT / "configs" / "attribution_trace.yaml"
SMALL_TRACE = ("prompts.limit=6", "output.plots=false", "output.logits=last")
SMALL_PATCHING = ("prompts.limit=6", "output.plots=false", "output.logits=last")


def _cells(executor, cells) -> dict[int, tuple[str, bytes]]:
    import torch

    out = {}
    with torch.inference_mode():
        for batch in executor.execute(cells):
            for o in batch:
                out[o.cell.index] = (json.dumps(o.row), o.logits.numpy().tobytes())
    return out


@pytest.mark.parametrize(
    "config,sets",
    [
        (TRACE, ("prompts.limit=2", "sweep.component=[block_output, mlp_output]")),
        (PATCHING, ("prompts.limit=3",)),
    ],
    ids=["trace", "patching"],
)
def test_tasks_run_alone_reproduce_the_local_loop_bit_for_bit(config: Path, sets: tuple[str, ...]) -> None:
    from ivx.engine import executor as runner
    from ivx.recipes import backends

    prep = prepare.prepare_all(config, sets)[0]
    local = runner.Executor(prep.cfg, prep.lm, prep.prompts, prep.plan)
    local.prepare()
    whole = _cells(local, list(prep.plan.cells))
    worker = runner.Executor(prep.cfg, prep.lm, prep.prompts, prep.plan)
    worker.prepare()
    tasks = backends.tasks(worker, list(prep.plan.cells), task_cells=7)
    flat = [cell.index for task in tasks for cell in task]
    assert sorted(flat) == sorted(c.index for c in prep.plan.cells) and len(tasks) > 1
    # the driver's record of what ran (manifest) is the local loop's
    assert worker.noop_cells == local.noop_cells and worker.report["groups"] == local.report["groups"]
    alone: dict[int, tuple[str, bytes]] = {}
    for task in reversed(tasks):  # order does not matter, only which cells share a task
        alone.update(_cells(worker, task))
    assert alone == whole


def test_ray_backend_without_ray_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a)
    )
    result = CliRunner().invoke(
        app, ["run", str(TRACE), "--backend", "ray", "--out", str(tmp_path), "--set", "prompts.limit=1"]
    )
    assert result.exit_code == 2, result.output
    assert f"{TRACE}:" in result.output and "backend 'ray' needs Ray" in result.output
    assert "ivx-interventions[ray]" in result.output and "Traceback" not in result.output
    assert not any(tmp_path.iterdir())


def test_unknown_backend_in_config_is_a_schema_error(tmp_path: Path) -> None:
    text = TRACE.read_text().replace("seed: 0", "seed: 0\nbackend: rayy")
    path = tmp_path / "c.yaml"
    path.write_text(text.replace("data/facts.jsonl", str(ROOT / "configs" / "data" / "facts.jsonl")))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert f"{path}:8  backend" in result.output and "rayy" in result.output


# ---- on a Ray cluster ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes on 127.0.0.1 (head + worker), one CPU each; the address drivers join."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    store = 100 * 2**20
    head = {"num_cpus": 1, "object_store_memory": store, "include_dashboard": False}
    c = Cluster(initialize_head=True, head_node_args=head)
    c.add_node(num_cpus=1, object_store_memory=store)
    c.wait_for_nodes()
    yield c.address
    if ray.is_initialized():
        ray.shutdown()
    c.shutdown()


def _ivx(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "ivx", "run", *args, "--quiet"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> Path:
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    return Path(out.strip().splitlines()[-1])


def _sets(sets: tuple[str, ...]) -> list[str]:
    return [a for s in sets for a in ("--set", s)]


def _same_results(a: Path, b: Path) -> None:
    from safetensors.torch import load_file

    rows_a = sorted((a / "results.jsonl").read_text().splitlines())
    rows_b = sorted((b / "results.jsonl").read_text().splitlines())
    assert rows_a == rows_b and rows_a
    ta, tb = load_file(str(a / "tensors.safetensors")), load_file(str(b / "tensors.safetensors"))
    assert ta.keys() == tb.keys()
    assert all(ta[k].numpy().tobytes() == tb[k].numpy().tobytes() for k in ta)
    assert json.loads((b / "manifest.json").read_text())["status"] == "complete"


def _wait_for_rows(run_root: Path, proc: subprocess.Popen) -> Path:
    """The run directory once its first results are written (the run still going)."""
    while proc.poll() is None:
        found = [p / "results.jsonl" for p in run_root.glob("*") if (p / "results.jsonl").is_file()]
        if found and found[0].read_text().count("\n") >= 1:
            return found[0].parent
        time.sleep(0.02)
    raise AssertionError(f"the run ended before any result: {proc.communicate()[1][-2000:]}")


@pytest.mark.slow
@pytest.mark.parametrize(
    "config,sets", [(TRACE, SMALL_TRACE), (PATCHING, SMALL_PATCHING)], ids=["trace", "patching"]
)
def test_ray_equals_local_bit_for_bit(cluster: str, tmp_path: Path, config: Path, sets: tuple) -> None:
    local = _finish(_ivx(str(config), "--out", str(tmp_path / "local"), *_sets(sets)))
    remote = _finish(
        _ivx(
            str(config),
            "--out",
            str(tmp_path / "ray"),
            "--backend",
            "ray",
            "--address",
            cluster,
            *_sets(sets),
        )
    )
    _same_results(local, remote)


@pytest.mark.slow
def test_killed_actor_is_restarted_and_the_run_is_identical(cluster: str, tmp_path: Path) -> None:
    import ray

    sets = (*SMALL_TRACE, "ray.task_cells=20")
    local = _finish(_ivx(str(TRACE), "--out", str(tmp_path / "local"), *_sets(sets)))
    proc = _ivx(
        str(TRACE), "--out", str(tmp_path / "ray"), "--backend", "ray", "--address", cluster, *_sets(sets)
    )
    run_dir = _wait_for_rows(tmp_path / "ray", proc)
    ray.init(address=cluster, logging_level="ERROR", log_to_driver=False)
    named = [
        a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("ivx-worker-")
    ]
    assert named, "no ivx actor found"
    victim = ray.get_actor(named[0]["name"], namespace=named[0]["namespace"])
    pid = ray.get(victim.pid.remote())
    done_at_kill = (run_dir / "results.jsonl").read_text().count("\n")
    os.kill(pid, signal.SIGKILL)
    ray.shutdown()
    remote = _finish(proc)
    total = len((local / "results.jsonl").read_text().splitlines())
    assert done_at_kill < total  # the actor died mid-run
    _same_results(local, remote)


@pytest.mark.slow
def test_resume_after_the_driver_is_killed(cluster: str, tmp_path: Path) -> None:
    # 30 prompts in tasks of 20 cells: ~190 tasks, so the kill lands mid-run even on an idle machine
    sets = (*SMALL_PATCHING, "prompts.limit=30", "ray.task_cells=20")
    local = _finish(_ivx(str(PATCHING), "--out", str(tmp_path / "local"), *_sets(sets)))
    proc = _ivx(
        str(PATCHING), "--out", str(tmp_path / "ray"), "--backend", "ray", "--address", cluster, *_sets(sets)
    )
    run_dir = _wait_for_rows(tmp_path / "ray", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = (run_dir / "results.jsonl").read_text().count("\n")
    assert 0 < partial < len((local / "results.jsonl").read_text().splitlines())
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "running"
    resumed = _finish(_ivx("--resume", str(run_dir), "--backend", "ray", "--address", cluster))
    assert resumed == run_dir
    _same_results(local, run_dir)


def _corrupted_paths(tmp: Path) -> Path:
    """configs/path_patching.yaml on the facts with a noise corruption (the sender from the clean run)."""
    import yaml

    data = yaml.safe_load(PATHS.read_text())
    data["prompts"] = {"file": str(ROOT / "configs" / "data" / "facts.jsonl"), "limit": 3}
    data["corrupt"] = {"kind": "noise", "positions": "subject", "samples": 3}
    data["interventions"][0]["source"] = "auto"
    data["metrics"] = ["indirect_effect", "target_prob"]
    path = tmp / "paths_noise.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.slow  # ~20 s each here: Ray start-up and two actors loading the model
@pytest.mark.parametrize(
    "which,sets",
    [
        ("paths", ("prompts.limit=4", "output.plots=false", "output.logits=last", "ray.task_cells=1")),
        ("paths_noise", ("output.plots=false", "output.logits=last", "ray.task_cells=1")),
        (
            "attribution",
            (
                "prompts.limit=3",
                "output.plots=false",
                "output.logits=last",
                "corrupt.samples=3",
                "sweep.component=[head_attention_value_output, head_query_output]",
                "ray.task_cells=1",
            ),
        ),
    ],
)
def test_path_patching_and_attribution_on_ray_equal_local(
    cluster: str, tmp_path: Path, which: str, sets
) -> None:
    """Prompt-by-prompt methods on Ray (a task per prompt, two actors): the local run's bytes."""
    from ivx.recipes import run as experiment

    config = {"paths": PATHS, "attribution": ATTRIBUTION}.get(which) or _corrupted_paths(tmp_path)
    local = experiment.run(config, sets, out_root=str(tmp_path / "local"), progress=False)
    remote = experiment.run(
        config, sets, out_root=str(tmp_path / "ray"), progress=False, backend="ray", address=cluster
    )
    _same_results(local, remote)
    rows = [json.loads(line) for line in (remote / "results.jsonl").read_text().splitlines()]
    assert len({r["prompt_index"] for r in rows}) >= 3
    if which == "attribution":  # the driver's verification against exact patching is the local one
        summaries = [json.loads((d / "summary.json").read_text()) for d in (local, remote)]
        checks = [s["attribution_verification"] for s in summaries]
        assert checks[0] == checks[1] and checks[0]["cells"] > 0
