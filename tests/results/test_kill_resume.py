"""kill -9 at random points of a real run, resume until complete: byte-identical results (slow)."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.results.durable import ivx, manifest, snapshot, write_config

KILLS = 12
KILLS_PER_ROUND = 4  # then the round's last attempt runs to completion, whatever the timing


def run_dir_of(out: Path) -> Path | None:
    found = [p for p in out.iterdir() if (p / "manifest.json").is_file()]
    return found[0] if found else None


def wait_for_run_dir(proc: subprocess.Popen, out: Path) -> float:
    """Seconds until `out` holds a run directory (or the process ended)."""
    t0 = time.monotonic()
    while proc.poll() is None and run_dir_of(out) is None:
        time.sleep(0.02)
    return time.monotonic() - t0


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_is_exact(tmp_path: Path) -> None:
    config = write_config(tmp_path / "exp")
    t0 = time.monotonic()
    (tmp_path / "reference").mkdir()
    proc = ivx("run", str(config), "--out", str(tmp_path / "reference"), "--quiet")
    opened = wait_for_run_dir(proc, tmp_path / "reference")  # start-up: imports, model, plan
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err
    duration = time.monotonic() - t0
    working = max(duration - opened, 0.1)  # baselines, cells, merge, summary
    reference = snapshot(Path(out.strip().splitlines()[-1]))
    rng = random.Random(13)
    kills, rounds, kills_with_dir = 0, 0, 0
    while kills < KILLS:
        # one round: a fresh run, killed at random moments and resumed until it completes
        rounds += 1
        assert rounds <= 3 * KILLS, f"only {kills} kills landed in {rounds - 1} rounds"
        out_root = tmp_path / f"round{rounds}"
        out_root.mkdir()
        round_kills = 0
        while True:
            run_dir = run_dir_of(out_root)
            if run_dir is not None and manifest(run_dir)["status"] == "complete":
                break
            args = (
                ("run", "--resume", str(run_dir)) if run_dir else ("run", str(config), "--out", str(out_root))
            )
            proc = ivx(*args, "--quiet")
            if round_kills < KILLS_PER_ROUND:
                if run_dir is None and rng.random() < 0.75:
                    # mostly kill a fresh run once it has a directory to resume, anywhere in its work
                    wait_for_run_dir(proc, out_root)
                    time.sleep(rng.uniform(0.0, working))
                else:
                    time.sleep(rng.uniform(0.0, duration))  # start-up, cells, merge, summary: anywhere
                if proc.poll() is None:
                    kills_with_dir += run_dir_of(out_root) is not None
                    proc.send_signal(signal.SIGKILL)
                    kills += 1
                    round_kills += 1
            _, err = proc.communicate(timeout=900)
            assert proc.returncode in (0, -signal.SIGKILL), err  # never a failed run or resume
        run_dir = run_dir_of(out_root)
        assert run_dir is not None and manifest(run_dir)["status"] == "complete"
        assert snapshot(run_dir) == reference, f"round {rounds} differs after {kills} kills"
    assert kills_with_dir >= KILLS // 2, f"only {kills_with_dir} of {kills} kills hit a run with a directory"
