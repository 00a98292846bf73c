"""Single-corruption activation patching: ivx's exact shortcuts vs the limits, side by side.

Workload (as in the speed issue): a GPT-2-small-shaped model (12 layers, d_model 768, vocab
50257, random weights, built offline), one prompt of T tokens whose first 3 tokens are replaced
by other tokens (the corrupted run), `block_output` restored from the clean run at every layer x
position, one sample per cell, the target's log-prob at the last position.

Variants, each timed in its own fresh process (so peak RSS is its own), interleaved over repeats,
fastest repeat reported:
- plain:  the same number of sequences through a plain batched forward, no hooks, logits of the
          last position only (`logits_to_keep=1`: the limit of a naive recompute; ratios are per this);
- plain_all: the same with every position's logits, as a plain `model(ids)` (the issue's baseline);
- off:    `ivx run` with every shortcut off;
- ivx:    `ivx run` with its defaults;
- hand:   a hand-written exact prefix-KV reuse (per position, all layers in one batch, continuing
          from the corrupted run's cache, forward hooks writing the clean state) — the reference
          for what exactness allows;
- pyvene / transformer_lens / nnsight: their documented per-cell loops, if installed.
ivx timings include its baselines, probes, result files and run directory. The model is loaded
outside every timing and then runs one untimed 2-row forward in every variant (`warm_up`: the
first forward after loading pays ~1 s on this shape for touching the freshly loaded weights).
Its weights' sha256 (recorded in every manifest) is already in ivx's digest store, as on every
run after a model's first (the first run hashes them once; the benchmark times that hashing and
prints it). Ratios are per the plain forward, measured in the same run; the load average is
sampled around every measurement.

    python benchmarks/shortcut_bench.py [--lengths 12 32] [--threads 1 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from gpt2_small import build_model, prompts, store_digests

N_LAYERS = 12


def ivx_config(model_dir: Path, length: int, shortcuts: bool) -> dict:
    clean, corrupted = prompts(length)
    flags = {k: shortcuts for k in ("prefix_reuse", "layer_reuse", "skip_noop", "defer_head")}
    return {
        "name": "bench",
        "model": {"name": str(model_dir)},
        "prompts": [{"base": corrupted, "source": clean, "target": " Trelin"}],
        "sweep": {"layer": "all", "position": "all"},
        "interventions": [
            {"kind": "vanilla", "component": "block_output", "layer": "$layer", "position": "$position"}
        ],
        "metrics": ["target_prob"],
        "output": {"plots": False, "logits": "none"},
        "batch": flags,
    }


def run_ivx(model_dir: Path, length: int, shortcuts: bool, work: Path) -> tuple[float, int]:
    import yaml

    from ivx.recipes import prepare
    from ivx.recipes import run as experiment

    path = work / f"bench_{length}_{shortcuts}.yaml"
    path.write_text(yaml.safe_dump(ivx_config(model_dir, length, shortcuts)))
    prep = prepare.prepare(path)  # loads the model; not timed
    warm_up(prep.lm.model, length)
    start = time.perf_counter()
    experiment.run(path, out_root=str(work / "runs"), progress=False, lm=prep.lm)
    return time.perf_counter() - start, len(prep.plan.cells)


def warm_up(model, length: int) -> None:  # type: ignore[no-untyped-def]
    """One untimed forward of 2 rows, the same in every variant: the first forward after loading
    touches every weight for the first time (page faults, ~1 s on this shape), which is loading,
    not the sweep."""
    with torch.inference_mode():
        model(input_ids=torch.randint(0, 1000, (2, length)), logits_to_keep=1)


def load_hf(model_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)


def run_plain(model_dir: Path, length: int, keep: int | None = 1) -> tuple[float, int]:
    """`keep=1`: logits of the last position only (a tuned baseline); None: all logits, as `model(ids)`."""
    model, _ = load_hf(model_dir)
    cells = N_LAYERS * length
    batch = max(1, 2048 // length)
    ids = torch.randint(0, 1000, (batch, length))
    warm_up(model, length)
    with torch.inference_mode():
        start = time.perf_counter()
        for done in range(0, cells, batch):
            if keep is None:
                model(input_ids=ids[: min(batch, cells - done)], use_cache=False)
            else:
                model(input_ids=ids[: min(batch, cells - done)], use_cache=False, logits_to_keep=keep)
    return time.perf_counter() - start, cells


def run_hand(model_dir: Path, length: int) -> tuple[float, int]:
    """Exact prefix-KV reuse written by hand: one batch of all layers per restored position."""
    from transformers import DynamicCache

    model, tok = load_hf(model_dir)
    warm_up(model, length)
    clean_text, corrupted_text = prompts(length)
    clean = torch.tensor([tok(clean_text)["input_ids"]])
    corrupted = torch.tensor([tok(corrupted_text)["input_ids"]])
    target = tok(" Trelin")["input_ids"][0]
    blocks = model.transformer.h
    start = time.perf_counter()
    with torch.inference_mode():
        states: list[torch.Tensor] = []
        handles = [
            b.register_forward_hook(lambda m, a, o: states.append(o[0] if isinstance(o, tuple) else o))
            for b in blocks
        ]
        model(input_ids=clean)
        for h in handles:
            h.remove()
        clean_states = torch.stack([s[0] for s in states])  # [layers, seq, d]
        cache = model(input_ids=corrupted, use_cache=True).past_key_values
        pairs = [(layer.keys, layer.values) for layer in cache.layers]
        logprobs = torch.empty(N_LAYERS, length)
        for pos in range(length):

            def restore(module, args, out, layer, pos=pos):  # type: ignore[no-untyped-def]
                hidden = out[0] if isinstance(out, tuple) else out
                hidden[layer, 0] = clean_states[layer, pos]
                return out

            handles = [
                b.register_forward_hook(lambda m, a, o, i=i: restore(m, a, o, i))
                for i, b in enumerate(blocks)
            ]
            past = None
            if pos:
                past = DynamicCache(config=model.config)
                for i, (k, v) in enumerate(pairs):
                    past.update(
                        k[:, :, :pos].expand(N_LAYERS, -1, -1, -1),
                        v[:, :, :pos].expand(N_LAYERS, -1, -1, -1),
                        i,
                    )
            ids = corrupted[:, pos:].expand(N_LAYERS, -1)
            kwargs = {"cache": past} if past is not None else {}
            logits = model(input_ids=ids, use_cache=past is not None, logits_to_keep=1, **kwargs).logits[
                :, -1
            ]
            for h in handles:
                h.remove()
            logprobs[:, pos] = torch.log_softmax(logits.float(), -1)[:, target]
    return time.perf_counter() - start, N_LAYERS * length


def run_pyvene(model_dir: Path, length: int) -> tuple[float, int]:
    import pyvene as pv
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()  # no tokenizer: ids are random
    warm_up(model, length)
    clean = torch.randint(0, 1000, (1, length))
    corrupted = torch.randint(0, 1000, (1, length))
    cells = 24  # timed, extrapolated per cell
    start = time.perf_counter()
    for i in range(cells):
        config = pv.IntervenableConfig(
            [
                {
                    "layer": i % N_LAYERS,
                    "component": "block_output",
                    "intervention_type": pv.VanillaIntervention,
                }
            ]
        )
        wrapped = pv.IntervenableModel(config, model)
        with torch.no_grad():
            wrapped({"input_ids": corrupted}, [{"input_ids": clean}], {"sources->base": i % length})
    per_cell = (time.perf_counter() - start) / cells
    return per_cell * N_LAYERS * length, N_LAYERS * length


def run_transformer_lens(model_dir: Path, length: int) -> tuple[float, int]:
    """TransformerLens's documented sweep: patching.get_act_patch_resid_pre (one forward per cell)."""
    import transformer_lens.patching as patching
    from transformer_lens import TransformerBridge

    model, tok = load_hf(model_dir)
    warm_up(model, length)
    model = TransformerBridge.boot_transformers(str(model_dir), hf_model=model, tokenizer=tok)
    model.enable_compatibility_mode()  # the documented HookedTransformer-equivalent mode
    clean = torch.randint(0, 1000, (1, length))
    corrupted = clean.clone()
    corrupted[0, :3] = torch.tensor([7, 8, 9])
    start = time.perf_counter()
    with torch.inference_mode():
        _, cache = model.run_with_cache(clean)
        patching.get_act_patch_resid_pre(
            model, corrupted, cache, lambda logits: logits[0, -1].log_softmax(-1)[5]
        )
    return time.perf_counter() - start, N_LAYERS * length


VARIANTS = {
    "plain": lambda d, t, w: run_plain(d, t),
    "plain_all": lambda d, t, w: run_plain(d, t, None),
    "off": lambda d, t, w: run_ivx(d, t, False, w),
    "ivx": lambda d, t, w: run_ivx(d, t, True, w),
    "hand": lambda d, t, w: run_hand(d, t),
    "pyvene": lambda d, t, w: run_pyvene(d, t),
    "transformer_lens": lambda d, t, w: run_transformer_lens(d, t),
}
OPTIONAL = {"pyvene": "pyvene", "transformer_lens": "transformer_lens"}


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        seconds, cells = VARIANTS[args.worker](Path(args.model), args.length, Path(tmp))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "cells": cells, "peak_rss_mb": rss}))


PEER_PYTHON: dict[str, str] = {}  # variant -> interpreter (a venv with the peer's transformers)


def measure(variant: str, model: Path, length: int, threads: int) -> dict:
    cmd = [
        PEER_PYTHON.get(variant, sys.executable),
        __file__,
        "--worker",
        variant,
        "--model",
        str(model),
        "--length",
        str(length),
        "--threads",
        str(threads),
    ]
    load_before = os.getloadavg()[0]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if out.returncode:
        raise RuntimeError(f"{variant} failed:\n{out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["load"] = max(load_before, os.getloadavg()[0])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[12, 32])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument(
        "--peer-python",
        nargs="*",
        default=[],
        metavar="NAME=PYTHON",
        help="interpreter per peer, e.g. pyvene=/venv-tf4.57/bin/python (a venv with a transformers they support)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.threads = args.threads[0]
        worker(args)
        return
    variants = []
    for name in args.variants:
        module = OPTIONAL.get(name)
        if module:
            python = dict(item.split("=", 1) for item in args.peer_python).get(name, sys.executable)
            probe = f"import {module}, transformers; print(transformers.__version__)"
            found = subprocess.run([python, "-c", probe], capture_output=True, text=True)
            if found.returncode:
                print(f"{name}: not installed for {python} — skipped")
                continue
            PEER_PYTHON[name] = python
            print(f"{name}: runs under {python} (transformers {found.stdout.strip().splitlines()[-1]})")
        variants.append(name)
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(Path(tmp) / "gpt2-small-random")
        os.environ["IVX_CACHE_DIR"] = str(Path(tmp) / "ivx-cache")  # the workers' digest store
        print(f"first run of this model: hashing its files took {store_digests(model):.2f} s")
        for length in args.lengths:
            for threads in args.threads:
                best: dict[str, dict] = {}
                loads: list[float] = []
                for _ in range(args.repeats):
                    for name in variants:
                        r = measure(name, model, length, threads)
                        loads.append(r["load"])
                        if name not in best or r["seconds"] < best[name]["seconds"]:
                            best[name] = r
                rates = {name: r["cells"] / r["seconds"] for name, r in best.items()}
                print(
                    f"\nT={length}, {threads} thread(s), {N_LAYERS * length} cells, "
                    f"load average {min(loads):.1f}-{max(loads):.1f} during the run"
                )
                print(
                    f"  {'variant':16s} {'cells/s':>9s} {'x plain':>8s} {'x plain_all':>11s} {'peak RSS':>9s}"
                )
                for name, r in best.items():
                    ratios = [
                        f"{rates[name] / rates[base]:{width}.2f}x" if base in rates else " " * (width + 1)
                        for base, width in (("plain", 7), ("plain_all", 10))
                    ]
                    print(f"  {name:16s} {rates[name]:9.1f} {' '.join(ratios)} {r['peak_rss_mb']:7.0f} MB")
                if "ivx" in best:
                    ivx_rate = best["ivx"]["cells"] / best["ivx"]["seconds"]
                    for other in ("off", "hand", "pyvene", "transformer_lens"):
                        if other in best:
                            rate = best[other]["cells"] / best[other]["seconds"]
                            print(f"  ivx defaults / {other}: {ivx_rate / rate:.2f}x")
                sys.stdout.flush()


if __name__ == "__main__":
    main()
