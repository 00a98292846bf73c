"""Attribution over SAE features vs exact feature patching through ivx, side by side in one process.

A GPT-2-small-shaped model (12 layers, d_model 768, 12 heads, vocab 50257, random weights, built
offline as in gpt2_small.py) and a random 16× ReLU SAE on `block_output` of layer 5 (d_sae =
12288, seeded). A handful of prompts of T tokens whose sources change one token; the sweep is
every feature × every position (d_sae × T cells per prompt), metric logit_diff.

`method: attribution` (with `verify:` re-running a sample of cells exactly) runs the whole sweep.
Exact patching over the whole sweep would take hours, so exact ivx runs a seeded random subset of
features × every position of every prompt, and its per-cell time is extrapolated to the full
sweep (said so in the output). Both include their runs' fixed costs (baselines, planning,
writing rows). The estimate-vs-exact correlation is over the exact subset's cells (every one of
them, not only the verified sample), beside the verification report's own.

    python benchmarks/sae_bench.py [--tokens 8] [--prompts 3] [--exact-features 48] [--threads 1]
    python benchmarks/sae_bench.py --smoke     # tiny sizes, the exact sweep complete (a test runs it)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

WORDS = (
    "In the old records the Zorvan Tower is located in the city of Trelin and the people who live "
    "there speak the language of the country as you know from the map of the"
).split()
LAYER = 5


def build_tiny(out: Path) -> Path:
    """The smoke model: a 2-layer, width-32 GPT-2 with ivx-toy's tokenizer (offline, instant)."""
    import shutil

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from ivx.model.loading import BUNDLED

    torch.manual_seed(0)
    vocab = json.loads((BUNDLED["ivx-toy"] / "config.json").read_text())["vocab_size"]
    config = GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=vocab, n_positions=64, bos_token_id=0, eos_token_id=0
    )
    GPT2LMHeadModel(config).save_pretrained(out)
    for name in BUNDLED["ivx-toy"].iterdir():
        if name.name.startswith(("tokenizer", "special_tokens", "vocab")):
            shutil.copy(name, out / name.name)
    return out


def records(tokenizer: Any, n: int, length: int) -> list[dict[str, str]]:
    """`n` records of exactly `length` tokens; each source swaps one word (its own position)."""
    out = []
    for i in range(n):
        words = (WORDS * 4)[i : i + length]
        swap = list(words)
        swap[1 + i % (length - 2)] = "Zorvan" if swap[1 + i % (length - 2)] != "Zorvan" else "Trelin"
        base, source = " ".join(words), " ".join(swap)
        for text in (base, source):
            if len(tokenizer(text, add_special_tokens=False)["input_ids"]) != length:
                raise SystemExit(f"prompt {text!r} is not {length} tokens")
        out.append({"base": base, "source": source, "target": " Trelin", "foil": " Zorvan"})
    return out


def time_run(
    lm: Any, work: Path, name: str, method: str, sae: Path, features: list[int], recs: list, **extra: Any
):
    """(seconds, rows by cell, run directory) of one `ivx run` of the feature × position sweep."""
    import yaml

    from ivx.recipes import run as experiment

    cfg = {
        "name": name,
        "model": {"name": str(lm.path)},
        "prompts": recs,
        "method": method,
        "sweep": {"feature": features, "position": "all"},
        "interventions": [
            {"kind": "vanilla", "sae": str(sae), "feature": "$feature", "position": "$position"}
        ],
        "metrics": ["logit_diff"],
        "output": {"root": str(work / "runs"), "logits": "none", "plots": False, "report": False},
        **extra,
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    start = time.perf_counter()
    run_dir = experiment.run(path, progress=False, lm=lm)
    seconds = time.perf_counter() - start
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    return seconds, rows, run_dir


def pearson(xs: list[float], ys: list[float]) -> float:
    """Pearson correlation (NaN for a constant series)."""
    from ivx.methods.verification import pearson as corr

    return corr(xs, ys)


def _sae_stats(summary: dict[str, Any]) -> dict[str, str]:
    """The run's SAE report (L0, variance explained) as text, if the run wrote one."""
    saes = summary.get("saes") or []
    entries = saes if isinstance(saes, list) else [dict(v, name=k) for k, v in saes.items()]
    return {
        str(e.get("name", e.get("sae", i))): ", ".join(
            f"{k} {v:.3g}" for k, v in e.items() if isinstance(v, float)
        )
        for i, e in enumerate(entries)
        if isinstance(e, dict)
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Time both methods; print timings, the ratio, the correlations and the load average."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--exact-features", type=int, default=48, help="features the exact run covers")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="tiny model and SAE; the exact sweep complete")
    args = parser.parse_args(argv)
    import torch

    from ivx.model import loading as models
    from ivx.model import sae as saes

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.smoke:
            model_dir, layer, tokens, n_prompts = build_tiny(work / "model"), 1, 5, 1
        else:
            from gpt2_small import build_model

            model_dir, layer, tokens, n_prompts = (
                build_model(work / "model"),
                LAYER,
                args.tokens,
                args.prompts,
            )
        lm = models.load(str(model_dir))
        d_in = lm.info.d_model
        d_sae = (2 if args.smoke else 16) * d_in  # the smoke SAE: 64 features, every cell exact
        hook = f"blocks.{layer}.hook_resid_post"
        sae_dir = saes.save(saes.random_sae("standard", d_in, d_sae, hook, seed=0, scale=0.05), work / "sae")
        recs = records(lm.tokenizer, n_prompts, tokens)
        every = list(range(d_sae))
        subset = every if args.smoke else sorted(random.Random(0).sample(every, args.exact_features))
        load_before = os.getloadavg()
        if not args.smoke:  # allocator, kernels, the SAE's load
            time_run(lm, work, "warm", "attribution", sae_dir, subset[:2], recs)
        verify = {"top_k": 10, "random": 10} if args.smoke else {"top_k": 50, "random": 50}
        atp_s, atp_rows, atp_dir = time_run(
            lm, work, "atp", "attribution", sae_dir, every, recs, attribution={"verify": verify}
        )
        exact_s, exact_rows, _ = time_run(lm, work, "exact", "exact", sae_dir, subset, recs)
        load_after = os.getloadavg()
        summary = json.loads((atp_dir / "summary.json").read_text())
        report = summary["attribution_verification"]
    key = lambda r: (r["prompt_index"], r["feature"], r["position"])  # noqa: E731
    estimate = {key(r): r["logit_diff"] for r in atp_rows}
    exact = {key(r): r["logit_diff"] for r in exact_rows}
    pairs = [(estimate[k], v) for k, v in exact.items() if k in estimate and v is not None]
    cells = len(atp_rows)
    exact_rate = len(exact_rows) / exact_s
    full_exact_s = cells / exact_rate
    result = {
        "cells": cells,
        "attribution_s": atp_s,
        "exact_cells": len(exact_rows),
        "exact_s": exact_s,
        "exact_full_s": full_exact_s,
        "ratio": full_exact_s / atp_s,
        "pearson_subset": pearson([p[0] for p in pairs], [p[1] for p in pairs]),
        "pearson_verified": report["metrics"]["logit_diff"]["pearson"],
        "verified": report["cells"],
        "load": (load_before, load_after),
    }
    sae_name = "ReLU"
    shape = (
        "tiny GPT-2 (2 layers, d_model 32)" if args.smoke else "GPT-2-small shape (12 layers, d_model 768)"
    )
    print(
        f"{shape}, {d_sae}-feature SAE ({sae_name}) at block_output layer {layer}, "
        f"T={tokens}, {n_prompts} prompt(s), {args.threads} thread(s), metric logit_diff"
    )
    print(f"{'':48}{'cells':>10}{'seconds':>10}{'cells/s':>12}")
    print(f"{'attribution (+ verify)':48}{cells:>10}{atp_s:>10.2f}{cells / atp_s:>12,.1f}")
    what = "complete" if len(exact_rows) == cells else f"{len(subset)} of {d_sae} features, extrapolated"
    print(f"{'exact (' + what + ')':48}{len(exact_rows):>10}{exact_s:>10.2f}{exact_rate:>12,.1f}")
    print(
        f"exact over the full sweep: {full_exact_s:.1f} s {'(measured)' if what == 'complete' else '(extrapolated)'}"
    )
    print(f"attribution / exact: {result['ratio']:.1f}× faster (target ≥ 50×)")
    print(
        f"estimate vs exact, pearson over the {len(pairs)} exact cells: {result['pearson_subset']:.4f}; "
        f"verification ({report['cells']} cells re-run): pearson {result['pearson_verified']}"
    )
    for name, stats in _sae_stats(summary).items():
        print(f"SAE on the run's prompts ({name}): {stats}")
    print(f"load average (1, 5, 15 min) before {load_before}, after {load_after}")
    if not all(math.isfinite(v) for v in (atp_s, exact_s)):
        raise SystemExit("non-finite timings")
    return result


if __name__ == "__main__":
    main()
