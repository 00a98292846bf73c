"""`benchmarks/gpu_bench.py --device cpu --smoke` runs end to end and prints a table whose numbers
are real: finite, positive rates, and as many cells as the tiny model's layers × prompt tokens."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # a fresh process that builds and times four workloads: ~12 s
def test_the_smoke_run_prints_a_table_of_real_numbers() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_bench.py", "--device", "cpu", "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    rows = {}
    for line in lines:
        parts = line.split()
        if len(parts) == 12 and parts[0] == "tiny":
            rows[(parts[2], parts[3])] = parts
    assert set(rows) == {("sweep", "ivx"), ("sweep", "plain"), ("trace", "ivx"), ("trace", "plain")}

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from gpu_bench import SHAPES
        from shortcut_bench import prompts
        from trace_bench import PROMPT
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from ivx.model import loading

    tokenizer = loading.load("ivx-toy", weights=False).tokenizer
    layers = SHAPES["tiny"][1]["n_layer"]
    expected = {
        "sweep": layers * len(tokenizer(prompts(8)[1])["input_ids"]),
        "trace": layers * len(tokenizer(PROMPT)["input_ids"]),
    }
    for (workload, _), parts in rows.items():
        cells, seconds, rate, ratio = int(parts[4]), float(parts[5]), float(parts[6]), float(parts[7])
        assert cells == expected[workload]
        assert seconds > 0 and math.isfinite(seconds)
        half = 0.00005  # seconds are printed to 4 decimals, the rate to 1
        assert cells / (seconds + half) - 0.05 <= rate <= cells / max(seconds - half, 1e-9) + 0.05
        assert ratio > 0 and math.isfinite(ratio)
    for workload in ("sweep", "trace"):
        assert float(rows[(workload, "plain")][7]) == 1.0  # ratios are per the plain forward
    verdicts = [line for line in lines if line.startswith("target tiny float32 sweep")]
    assert len(verdicts) == 3  # vs plain, vs TransformerLens, memory
    assert all(line.endswith(("met", "not met")) or "not measured" in line for line in verdicts)
