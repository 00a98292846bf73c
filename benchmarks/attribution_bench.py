"""Attribution patching vs exact patching through ivx, side by side in one process.

A GPT-2-small-shaped model (12 layers, d_model 768, 12 heads, vocab 50257, random weights,
built offline as in trace_bench.py), one prompt of T tokens whose source differs in its first
3 tokens; sweep every head × position × layer of `head_attention_value_output` (12 × 12 × T
cells), metric indirect_effect. `method: attribution` runs the whole sweep; exact ivx (default
shortcuts) runs a subset of layers and heads and its per-cell time is extrapolated to the full
sweep (said so in the output). Both include their runs' fixed costs (baselines, writing rows).

    python benchmarks/attribution_bench.py [--tokens 32] [--threads 1] [--exact-layers 0,5,11] [--exact-heads 4]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trace_bench import build_model  # noqa: E402

WORDS = (
    "In the old records , the Zorvan Tower is located in the city of Trelin , and the people who "
    "live there speak the language of the country , as you know from the map of the"
).split()
SWAP = ("When", "Mary", "John")


def prompts(tokenizer: object, length: int) -> list[dict[str, str]]:
    """One record of exactly `length` tokens; the source swaps its first 3 tokens."""
    words = (WORDS * 4)[:length]
    base = " ".join(words)
    source = " ".join([*SWAP, *words[3:]])
    n = len(tokenizer(base, add_special_tokens=False)["input_ids"])  # type: ignore[operator]
    if n != length or len(tokenizer(source, add_special_tokens=False)["input_ids"]) != n:  # type: ignore[operator]
        raise SystemExit(f"prompt has {n} tokens, expected {length}")
    return [{"base": base, "source": source, "target": " Trelin"}]


def time_run(
    lm: object, work: Path, method: str, layers: object, heads: object, records: list
) -> tuple[float, int]:
    """Seconds and cells of one `ivx run` of the head × position sweep."""
    from ivx.recipes import run as experiment

    cfg = {
        "name": f"bench_{method}",
        "model": {"name": str(lm.path)},  # type: ignore[attr-defined]
        "prompts": records,
        "method": method,
        "sweep": {"layer": layers, "head": heads, "position": "all"},
        "interventions": [
            {
                "kind": "vanilla",
                "component": "head_attention_value_output",
                "layer": "$layer",
                "head": "$head",
                "position": "$position",
            }
        ],
        "metrics": ["indirect_effect"],
        "output": {"root": str(work), "logits": "none", "plots": False},
    }
    path = work / f"{method}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    start = time.perf_counter()
    run_dir = experiment.run(path, progress=False, lm=lm)
    seconds = time.perf_counter() - start
    cells = len((run_dir / "results.jsonl").read_text().splitlines())
    return seconds, cells


def main() -> None:
    """Time both methods and print cells/s, the ratio and the load average."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--exact-layers", default="0,5,11", help="layers the exact run covers")
    parser.add_argument("--exact-heads", type=int, default=4, help="heads 0..N-1 the exact run covers")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from ivx.model import loading as models

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        lm = models.load(str(build_model(work / "model")))
        records = prompts(lm.tokenizer, args.tokens)
        load_before = os.getloadavg()
        time_run(lm, work, "attribution", [0], [0], records)  # warm-up (allocator, kernels)
        atp_s, atp_cells = time_run(lm, work, "attribution", "all", "all", records)
        layers = [int(x) for x in args.exact_layers.split(",")]
        exact_s, exact_cells = time_run(lm, work, "exact", layers, list(range(args.exact_heads)), records)
        load_after = os.getloadavg()
    atp_rate, exact_rate = atp_cells / atp_s, exact_cells / exact_s
    print(f"GPT-2-small shape, T={args.tokens}, {args.threads} thread(s), head × position × layer sweep")
    print(f"attribution: {atp_cells} cells (the full sweep) in {atp_s:.2f} s = {atp_rate:,.1f} cells/s")
    print(
        f"exact ivx:   {exact_cells} cells (layers {layers}, heads 0..{args.exact_heads - 1}) in "
        f"{exact_s:.2f} s = {exact_rate:,.1f} cells/s; the full sweep extrapolated: "
        f"{atp_cells / exact_rate:.1f} s"
    )
    print(f"attribution / exact: {atp_rate / exact_rate:.1f}× the cells per second")
    print(f"load average (1, 5, 15 min) before {load_before}, after {load_after}")


if __name__ == "__main__":
    main()
