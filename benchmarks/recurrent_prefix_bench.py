"""Prefix reuse on a recurrent model: ivx's defaults vs every shortcut but prefix reuse, side by side.

Workload: a Mamba-2-shaped model (d_model 768, 12 layers, 24 heads of 64, state 128, vocab 50,277,
random weights, built offline — the shape of `state-spaces/mamba2-130m` with half its layers),
one prompt of T word-level tokens whose first 3 differ from the clean prompt (`gpt2_small.prompts`,
as in `shortcut_bench.py`), `block_output`
restored from the clean run at every layer × position, the target's probability.

Variants, alternated over repeats in one process (fastest repeat reported):
- reuse: `ivx run` with the defaults (prefix reuse with recomputed prefix states, layer reuse, …);
- no_prefix: the same with `batch.prefix_reuse: false` (what ran before ivx recomputed prefixes);
- plain: the same number of sequences through a plain batched forward, no hooks (the naive limit).
Both ivx runs' results must agree (the largest |difference| of the metric is printed), and the
manifest says which shortcuts engaged and how many cells continued after a reused prefix. The load
average is sampled around every measurement.

    python benchmarks/recurrent_prefix_bench.py [--length 24] [--repeats 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from gpt2_small import copy_tokenizer, prompts

from ivx.model import loading
from ivx.recipes import run as experiment

LAYERS = 12


def build(out: Path) -> Path:
    """The random Mamba-2 model with ivx-toy's tokenizer."""
    from transformers import Mamba2Config, Mamba2ForCausalLM

    torch.manual_seed(0)
    config = Mamba2Config(
        hidden_size=768, num_hidden_layers=LAYERS, num_heads=24, head_dim=64, state_size=128,
        n_groups=1, expand=2, vocab_size=50277, chunk_size=256,
    )  # fmt: skip
    Mamba2ForCausalLM(config).save_pretrained(out)
    copy_tokenizer(out)
    return out


def config(model_dir: Path, length: int, prefix_reuse: bool) -> dict:
    clean, corrupted = prompts(length)
    return {
        "name": f"recurrent-{'reuse' if prefix_reuse else 'no-prefix'}",
        "model": {"name": str(model_dir)},
        "prompts": [{"base": corrupted, "source": clean, "target": " Trelin"}],
        "sweep": {"layer": "all", "position": "all"},
        "interventions": [
            {"kind": "vanilla", "component": "block_output", "layer": "$layer", "position": "$position"}
        ],
        "metrics": ["target_prob"],
        "output": {"plots": False, "logits": "none", "report": False},
        "batch": {"prefix_reuse": prefix_reuse},
    }


def run_ivx(model_dir: Path, length: int, prefix_reuse: bool, work: Path, lm: object) -> tuple[float, Path]:
    path = work / f"bench_{prefix_reuse}.yaml"
    path.write_text(yaml.safe_dump(config(model_dir, length, prefix_reuse)))
    start = time.perf_counter()
    run_dir = experiment.run(path, out_root=str(work / "runs"), progress=False, lm=lm)
    return time.perf_counter() - start, Path(run_dir)


def run_plain(model: torch.nn.Module, length: int) -> float:
    cells = LAYERS * length
    batch = max(1, 2048 // length)
    ids = torch.randint(0, 1000, (batch, length))
    with torch.inference_mode():
        start = time.perf_counter()
        for done in range(0, cells, batch):
            model(input_ids=ids[: min(batch, cells - done)], use_cache=False, logits_to_keep=1)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    best: dict[str, float] = {}
    loads: list[float] = []
    with tempfile.TemporaryDirectory(prefix="ivx-recurrent-bench-") as tmp:
        work = Path(tmp)
        model_dir = build(work / "mamba2")
        lm = loading.load(str(model_dir))
        with torch.inference_mode():
            lm.model(input_ids=torch.randint(0, 1000, (2, args.length)), logits_to_keep=1)  # warm up
        runs: dict[str, Path] = {}
        for _ in range(args.repeats):
            for variant in ("reuse", "no_prefix", "plain"):
                loads.append(os.getloadavg()[0])
                if variant == "plain":
                    seconds = run_plain(lm.model, args.length)
                else:
                    seconds, runs[variant] = run_ivx(model_dir, args.length, variant == "reuse", work, lm)
                loads.append(os.getloadavg()[0])
                best[variant] = min(best.get(variant, float("inf")), seconds)
        results = {
            v: [
                json.loads(line)["target_prob"]
                for line in (runs[v] / "results.jsonl").read_text().splitlines()
            ]
            for v in runs
        }
        manifest = json.loads((runs["reuse"] / "manifest.json").read_text())["shortcuts"]
    diff = max(abs(a - b) for a, b in zip(results["reuse"], results["no_prefix"], strict=True))
    engaged = {k: v["on"] for k, v in manifest["shortcuts"].items()}
    after = sum(g["cells_after_prefix"] for g in manifest["groups"])
    print(
        f"Mamba-2 shape, {LAYERS} layers, T={args.length}, {LAYERS * args.length} cells, threads {args.threads}"
    )
    print(f"load average during the run: {min(loads):.2f}-{max(loads):.2f}")
    for variant, seconds in best.items():
        print(f"  {variant:10s} {seconds:7.2f} s   {seconds / best['plain']:.2f}x plain")
    print(f"prefix reuse vs none: {best['no_prefix'] / best['reuse']:.2f}x faster")
    print(f"shortcuts engaged: {engaged}; cells after a reused prefix: {after}")
    print(f"largest |target_prob difference| between the two ivx runs: {diff:.2e}")


if __name__ == "__main__":
    sys.exit(main())
