"""The thread policy: who decides the count and the wait policy, that torch starts with them, and
that the manifest records them with start-up timings that add up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ivx.core import startup, threads

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A process state before torch: no OpenMP or ivx thread settings, torch not yet imported."""
    _clear(monkeypatch)
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # restored after the test
    return monkeypatch


def _clear(monkeypatch: pytest.MonkeyPatch) -> None:
    """No thread settings; whatever `configure` sets is removed again after the test."""
    for name in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", threads.ENV):
        monkeypatch.setenv(name, "")  # records the original value (or its absence) for teardown
        monkeypatch.delenv(name)
    monkeypatch.setattr(threads, "_SET_BY_IVX", set())
    monkeypatch.setattr(threads, "_BEFORE", [])


def test_parse_accepts_counts_auto_off_and_names_the_setting() -> None:
    assert threads.parse(" 3 ", "IVX_THREADS") == 3
    assert threads.parse("AUTO", "IVX_THREADS") == "auto"
    assert threads.parse("off", "IVX_THREADS") == "off"
    assert threads.parse("", "IVX_THREADS") is None
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(threads.ThreadsError, match=r"IVX_THREADS .* ≥ 1, 'auto' or 'off'"):
            threads.parse(bad, "IVX_THREADS")


def test_auto_sets_passive_waiting_before_torch_and_leaves_the_count(fresh: pytest.MonkeyPatch) -> None:
    policy = threads.configure()
    assert (policy.threads, policy.source) == (None, "auto")
    assert (policy.wait_policy, policy.wait_source) == ("PASSIVE", "ivx")
    assert "OMP_NUM_THREADS" not in os.environ  # torch's own count: results as before, bit for bit
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"


def test_the_callers_environment_wins_then_ivx_threads_then_the_config(fresh: pytest.MonkeyPatch) -> None:
    fresh.setenv(threads.ENV, "3")
    assert (threads.configure(1).threads, threads.configure(1).source) == (3, "IVX_THREADS")
    fresh.setenv("OMP_NUM_THREADS", "1")
    fresh.setattr(threads, "_SET_BY_IVX", set())
    fresh.setenv("OMP_WAIT_POLICY", "ACTIVE")
    policy = threads.configure(2)
    assert (policy.threads, policy.source) == (None, "OMP_NUM_THREADS")  # torch will read it
    assert (policy.wait_policy, policy.wait_source) == ("ACTIVE", "OMP_WAIT_POLICY")
    assert os.environ["OMP_NUM_THREADS"] == "1"


def test_the_config_setting_applies_without_an_environment(fresh: pytest.MonkeyPatch) -> None:
    policy = threads.configure(1)
    assert (policy.threads, policy.source) == (1, "config")
    assert os.environ["OMP_NUM_THREADS"] == "1"


def test_off_changes_nothing(fresh: pytest.MonkeyPatch) -> None:
    fresh.setenv(threads.ENV, "off")
    policy = threads.configure(1)
    assert (policy.source, policy.wait_policy, policy.wait_source) == ("off", None, "off")
    assert "OMP_NUM_THREADS" not in os.environ and "OMP_WAIT_POLICY" not in os.environ


def test_after_torch_only_the_count_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    _clear(monkeypatch)
    before = torch.get_num_threads()
    try:
        policy = threads.configure(1)
        assert torch.get_num_threads() == 1 == policy.threads
        assert policy.wait_policy is None and "torch was imported before ivx" in policy.wait_source
        assert "OMP_WAIT_POLICY" not in os.environ
    finally:
        torch.set_num_threads(before)


def test_auto_keeps_torchs_count_and_returns_to_it_after_a_set_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    _clear(monkeypatch)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # the caller's choice, before ivx
        assert (threads.configure().threads, threads.configure().source) == (1, "auto")
        assert threads.configure(2).threads == 2 == torch.get_num_threads()  # one config's `threads: 2`
        assert threads.configure().threads == 1 == torch.get_num_threads()  # the next run: auto again
    finally:
        torch.set_num_threads(before)


def test_a_bad_ivx_threads_is_a_clear_error_with_exit_2() -> None:
    env = {**os.environ, threads.ENV: "many"}
    proc = subprocess.run(
        [sys.executable, "-m", "ivx", "--help"], env=env, capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 2
    assert "IVX_THREADS 'many' must be a number of threads ≥ 1, 'auto' or 'off'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_run_starts_torch_with_the_policy_and_its_manifest_adds_up(tmp_path: Path) -> None:
    """A real `python -m ivx run`: torch runs on the chosen thread count; start-up parts sum to
    their total, and start-up plus the cells' seconds fit inside the process's wall time."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
    env[threads.ENV] = "1"
    cmd = [sys.executable, "-m", "ivx", "run", "configs/causal_trace.yaml", "--quiet", "--out", str(tmp_path)]
    cmd += ["--set", "prompts.limit=1", "--set", "output.plots=false", "--set", "sweep.layer=[0]"]
    cmd += ["--set", "sweep.component=[block_output]", "--set", "trace.select_correct=false"]
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((Path(proc.stdout.strip().splitlines()[-1]) / "manifest.json").read_text())
    assert manifest["threads"] == {
        "threads": 1,
        "source": "IVX_THREADS",
        "wait_policy": "PASSIVE",
        "wait_source": "ivx",
        "cores": threads.cores(),
    }
    start = manifest["startup"]
    parts = ("imports", "model_load", "hashing", "other")
    assert set(start) == {*parts, "total"}
    assert all(start[p] >= 0 for p in parts)
    assert abs(sum(start[p] for p in parts) - start["total"]) < 0.01
    assert start["imports"] > 0 and start["model_load"] > 0  # torch and the model were loaded
    assert start["total"] + manifest["seconds"] <= wall + 0.05  # parts of the whole, never more


def test_timed_counts_a_nested_stretch_once() -> None:
    before = startup.spent()
    begun = time.perf_counter()
    with startup.timed("outer-test"):
        with startup.timed("inner-test"):
            time.sleep(0.02)
    whole = time.perf_counter() - begun
    spent = startup.spent()
    inner = spent["inner-test"] - before.get("inner-test", 0.0)
    outer = spent["outer-test"] - before.get("outer-test", 0.0)  # its own time only
    assert inner >= 0.02 and outer >= 0
    assert inner + outer <= whole  # the nested stretch is not counted twice
