"""`benchmarks/sae_bench.py --smoke` runs end to end: every feature × position of a tiny model's SAE,
attribution (with verification) and the complete exact sweep, with real numbers."""

from __future__ import annotations

import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_smoke_run_measures_both_methods_on_the_same_cells(capsys) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import sae_bench

        result = sae_bench.main(["--smoke"])
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    out = capsys.readouterr().out
    assert result["cells"] == result["exact_cells"] == 64 * 5  # d_sae × T, the exact sweep complete
    assert result["verified"] == 20
    for key in ("attribution_s", "exact_s", "exact_full_s", "ratio"):
        assert math.isfinite(result[key]) and result[key] > 0
    # the estimate is the first-order term of the exact effect: on a tiny model they agree closely
    assert result["pearson_subset"] > 0.99 and result["pearson_verified"] > 0.99
    assert "attribution / exact" in out and "load average" in out and "(measured)" in out
