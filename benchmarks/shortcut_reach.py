"""Shortcut reach: which exact shortcuts engage on a tiny model of every causal-LM architecture.

Per `model_type` of the installed transformers (or those given), a tiny random model
(`coverage_models.build`) runs one small patching experiment (`block_output` at every layer and
three positions) with ivx's defaults and again with every shortcut off; the row records the
manifest's shortcuts (on, or the reason) and whether the two runs' cell logits agree (1e-4).

    python benchmarks/shortcut_reach.py reach.jsonl                 # every architecture (~8 min)
    python benchmarks/shortcut_reach.py reach.jsonl mamba jamba     # a few
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import coverage_models  # noqa: E402

BASE = "When Mary and John went to the store , John gave a drink to"
SOURCE = "When Tom and James went to the park , James gave a ball to"
OFF = {
    "prefix_reuse": False,
    "layer_reuse": False,
    "defer_head": False,
    "trim_final": False,
    "skip_noop": False,
}


def _run(lm_dir: Path, root: Path, batch: dict[str, bool], name: str) -> tuple[dict, dict]:
    import yaml
    from safetensors.torch import load_file

    from ivx.recipes import run as experiment

    iv = {"kind": "vanilla", "component": "block_output", "layer": "$layer", "position": "$position"}
    body = {"name": name, "model": {"name": str(lm_dir)}, "batch": batch,
            "prompts": [{"base": BASE, "source": SOURCE, "target": " Mary"}], "metrics": ["target_prob"],
            "output": {"plots": False}, "sweep": {"layer": "all", "position": [2, 9, -1]}, "interventions": [iv]}  # fmt: skip
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body))
    run_dir = experiment.run(path, out_root=str(root / name), progress=False)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    return manifest["shortcuts"]["shortcuts"], load_file(str(run_dir / "tensors.safetensors"))


def check(model_type: str, root: Path) -> dict[str, Any]:
    """One architecture's row: status (exact | mismatch | error | unbuilt) and its shortcuts."""
    start, row = time.perf_counter(), {"arch": model_type}
    try:
        lm_dir = coverage_models.build(model_type, root / model_type)
    except Exception as error:  # noqa: BLE001 - the table records every failure
        return {**row, "status": "unbuilt", "why": f"{type(error).__name__}: {str(error)[:120]}"}
    try:
        state, on = _run(lm_dir, root, {}, "on")
        _, off = _run(lm_dir, root, OFF, "off")
    except Exception as error:  # noqa: BLE001
        return {**row, "status": "error", "why": f"{type(error).__name__}: {str(error)[:160]}"}
    diff = max((float((on[k] - off[k]).abs().max()) for k in off), default=0.0)
    row["shortcuts"] = {k: True if v["on"] else v.get("why", "") for k, v in state.items()}
    row["status"] = "exact" if diff <= 1e-4 else f"mismatch {diff:.2g}"
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def summary(rows: list[dict[str, Any]]) -> str:
    """Counts: exact architectures, every shortcut on, each shortcut on."""
    exact = [r for r in rows if r["status"] == "exact"]
    every = sum(all(v is True for v in r["shortcuts"].values()) for r in exact)
    each = Counter(k for r in exact for k, v in r["shortcuts"].items() if v is True)
    lines = [
        f"{len(rows)} architectures, {len(exact)} exact with the defaults, {every} with every shortcut on"
    ]
    lines += [f"  {name}: on for {count} of {len(exact)}" for name, count in sorted(each.items())]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Write one JSON line per architecture to argv[0]; print the summary."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    out, archs = Path(argv[0]), argv[1:] or sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ivx-reach-") as tmp, out.open("w") as sink:
        for model_type in archs:
            rows.append(check(model_type, Path(tmp)))
            sink.write(json.dumps(rows[-1]) + "\n")
            sink.flush()
    print(summary(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
