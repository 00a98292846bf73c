"""Helpers for the durability tests: a small trace config and a byte-level snapshot of a run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
FACTS = ROOT / "configs" / "data" / "facts.jsonl"
CONFIG = """name: durable
model: {name: ivx-toy}
seed: 0
prompts: {file: facts.jsonl}
corrupt: {kind: noise, positions: subject, scale: 3.0, samples: 2}
sweep:
  component: [block_output]
  layer: all
  position: all
interventions:
  - {kind: vanilla, component: $component, layer: $layer, position: $position}
metrics: [indirect_effect, target_prob]
output: {logits: last, plots: false}
batch: {size: 8, defer_head: false}
"""


def write_config(folder: Path, prompts: int = 3) -> Path:
    """config.yaml + facts.jsonl (the first `prompts` facts) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = FACTS.read_text().splitlines()[:prompts]
    (folder / "facts.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "config.yaml").write_text(CONFIG)
    return folder / "config.yaml"


def snapshot(run_dir: Path) -> dict[str, Any]:
    """What must be identical between a clean run and an interrupted-and-resumed one.

    results.jsonl is an append log whose row order follows batch completion, which a resume
    changes; its identity is the set of rows keyed by cell (compared sorted by cell, with no
    duplicates). Every file derived from it (results.csv, summary.json) and tensors.safetensors
    must match byte for byte.
    """
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    cells = [row["cell"] for row in rows]
    assert len(cells) == len(set(cells)), "duplicate cells in results.jsonl"
    return {
        "rows": sorted(rows, key=lambda r: r["cell"]),
        **{
            name: (run_dir / name).read_bytes()
            for name in ("results.csv", "summary.json", "tensors.safetensors", "plan.jsonl", "resolved.yaml")
        },
    }


def ivx(*args: str, **kwargs: Any) -> subprocess.Popen:
    """`python -m ivx ...` in a child process (this tree first on the path)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(
        [sys.executable, "-m", "ivx", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def manifest(run_dir: Path) -> dict[str, Any]:
    """The run's manifest.json."""
    return json.loads((run_dir / "manifest.json").read_text())
