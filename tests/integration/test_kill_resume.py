"""kill -9 at random points of a real run, resume until complete: byte-identical results (slow)."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest

from tests.integration.durable import ivx, manifest, snapshot, write_config

KILLS = 12


def run_dir_of(out: Path) -> Path | None:
    found = [p for p in out.iterdir() if (p / "manifest.json").is_file()]
    return found[0] if found else None


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_is_exact(tmp_path: Path) -> None:
    config = write_config(tmp_path / "exp")
    proc = ivx("run", str(config), "--out", str(tmp_path / "reference"), "--quiet")
    t0 = time.monotonic()
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err
    duration = time.monotonic() - t0
    reference = snapshot(Path(out.strip().splitlines()[-1]))
    rng = random.Random(13)
    kills, rounds = 0, 0
    while kills < KILLS:
        # one round: a fresh run, killed at random moments and resumed until it completes
        rounds += 1
        out_root = tmp_path / f"round{rounds}"
        out_root.mkdir()
        for _attempt in range(50):
            run_dir = run_dir_of(out_root)
            if run_dir is not None and manifest(run_dir)["status"] == "complete":
                break
            args = (
                ("run", "--resume", str(run_dir)) if run_dir else ("run", str(config), "--out", str(out_root))
            )
            proc = ivx(*args, "--quiet")
            time.sleep(rng.uniform(0.0, duration))  # start-up, cells, merge, summary: anywhere
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.communicate(timeout=900)
        run_dir = run_dir_of(out_root)
        assert run_dir is not None and manifest(run_dir)["status"] == "complete"
        assert snapshot(run_dir) == reference, f"round {rounds} differs after {kills} kills"
    assert kills >= 10
