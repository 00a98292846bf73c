"""The GPU run, ready to go: ivx vs a plain forward vs TransformerLens vs nnsight, in one table.

Workloads (per model shape and dtype, random weights built offline, ivx-toy's tokenizer):
- sweep: single-corruption activation patching, as in shortcut_bench.py — one prompt of T tokens
  whose first 3 tokens are replaced, block_output restored from the clean run at every
  layer × position, the target's probability at the last position;
- trace: causal tracing of one fact, as in trace_bench.py — Gaussian noise on the subject,
  10 samples per cell, block_output restored at every layer × position.
Shapes: GPT-2 small (12 layers, d_model 768) and Pythia-410M (24 layers, d_model 1024, GPT-NeoX);
`--smoke` uses a 2-layer, width-32 GPT-2 instead. Dtypes: float32 and bfloat16.

Variants, all in this process, the model loaded outside every timing:
- ivx:   `ivx run` with its defaults (the model handed in, as `ivx.run` does for a loaded model);
- plain: the same sequences (cells × samples) through a plain batched forward, last-position
         logits only: the limit of recomputing every cell; ratios are per this;
- transformer_lens / nnsight: their documented per-cell patching, when installed (else skipped).
Printed per row: cells/s, the ratio to plain, ivx's speed-up over the row, peak GPU memory
(above what was allocated before the variant, and in total) and mean GPU utilisation (pynvml,
when installed).

Targets (issue 29), judged on the single-corruption sweep of every shape and dtype on CUDA:
- ivx defaults ≥ 3× the plain batched forward;
- ivx defaults ≥ 10× TransformerLens;
- ivx's peak memory above the weights within its `batch.memory_gb` budget.

    python benchmarks/gpu_bench.py [--device cuda] [--length 16] [--shapes gpt2-small pythia-410m]
    python benchmarks/gpu_bench.py --device cpu --smoke      # the fast-tier check, seconds
"""

from __future__ import annotations

import argparse
import functools
import math
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from shortcut_bench import ivx_config
from trace_bench import PROMPT, SUBJECT

TARGETS = {"plain": 3.0, "transformer_lens": 10.0}
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "gpt2-small": (
        "gpt2",
        {"n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257, "n_positions": 1024},
    ),
    "pythia-410m": (
        "gpt_neox",
        {
            "num_hidden_layers": 24,
            "hidden_size": 1024,
            "num_attention_heads": 16,
            "intermediate_size": 4096,
            "vocab_size": 50304,
            "rotary_pct": 0.25,
            "max_position_embeddings": 2048,
        },
    ),
    "tiny": (
        "gpt2",
        {
            "n_layer": 2,
            "n_embd": 32,
            "n_head": 2,
            "vocab_size": 1000,
            "n_positions": 128,
            "bos_token_id": 0,
            "eos_token_id": 0,
        },
    ),
}


def build(shape: str, out: Path) -> Path:
    """A random-weight model of `shape` with ivx-toy's tokenizer, saved in `out` (offline)."""
    import shutil

    from transformers import AutoConfig, AutoModelForCausalLM

    from ivx.model.loading import BUNDLED

    torch.manual_seed(0)
    model_type, fields = SHAPES[shape]
    config = AutoConfig.for_model(model_type, **fields)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    for path in BUNDLED["ivx-toy"].iterdir():
        if path.name.startswith(("tokenizer", "special_tokens", "vocab")):
            shutil.copy(path, out / path.name)
    return out


def config(workload: str, model_dir: Path, length: int, device: str, dtype: str) -> dict[str, Any]:
    """The ivx config of a workload (the sweep's from shortcut_bench, the trace's from trace_bench)."""
    if workload == "sweep":
        cfg = ivx_config(model_dir, length, True)
        cfg.pop("batch")  # ivx defaults
    else:
        cfg = {
            "name": "bench",
            "prompts": [{"base": PROMPT, "subject": SUBJECT, "target": " Trelin"}],
            "corrupt": {"kind": "noise", "positions": "subject", "samples": 10},
            "sweep": {"layer": "all", "position": "all"},
            "interventions": [
                {"kind": "vanilla", "component": "block_output", "layer": "$layer", "position": "$position"}
            ],
            "metrics": ["indirect_effect"],
            "output": {"plots": False, "logits": "none"},
        }
    cfg["model"] = {"name": str(model_dir), "device": device, "dtype": dtype}
    return cfg


class Gpu:
    """Peak memory and mean utilisation of the current CUDA device around one variant."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.samples: list[float] = []
        self.stop = threading.Event()
        self.before = 0

    def __enter__(self) -> Gpu:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        except Exception:  # noqa: BLE001 - no pynvml: no utilisation column
            return
        while not self.stop.wait(0.05):
            self.samples.append(float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.stop.set()
            self.thread.join()
            self.peak = torch.cuda.max_memory_allocated()

    def row(self) -> dict[str, float]:
        """peak_gb (above the start), total_gb, util (%), NaN where not measured."""
        if not self.cuda:
            return {"peak_gb": math.nan, "total_gb": math.nan, "util": math.nan}
        util = sum(self.samples) / len(self.samples) if self.samples else math.nan
        return {"peak_gb": (self.peak - self.before) / 2**30, "total_gb": self.peak / 2**30, "util": util}


def timed(fn: Callable[[], int], device: torch.device) -> dict[str, float]:
    """Run `fn` (returns its cells) once, timed, with its GPU memory and utilisation."""
    with Gpu(device) as gpu:
        start = time.perf_counter()
        cells = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return {"cells": cells, "seconds": seconds, **gpu.row()}


def run_ivx(path: Path, lm: Any, work: Path) -> int:
    """ivx's defaults on the loaded model; returns its cells."""
    from ivx.recipes import run as experiment

    run_dir = experiment.run(path, out_root=str(work / "runs"), progress=False, lm=lm)
    return sum(1 for _ in (run_dir / "results.jsonl").open())


def run_plain(lm: Any, rows: int, length: int) -> int:
    """`rows` sequences through plain batched forwards (last-position logits); returns rows."""
    batch = max(1, (16384 if lm.device.type == "cuda" else 2048) // length)
    ids = torch.randint(0, 1000, (batch, length), device=lm.device)
    with torch.inference_mode():
        for done in range(0, rows, batch):
            lm.model(input_ids=ids[: min(batch, rows - done)], use_cache=False, logits_to_keep=1)
    return rows


def run_transformer_lens(lm: Any, length: int, cells: int) -> int:
    """TransformerLens's documented sweep, patching.get_act_patch_resid_pre (one forward per cell)."""
    import transformer_lens.patching as patching
    from transformer_lens import TransformerBridge

    model = TransformerBridge.boot_transformers(lm.path, hf_model=lm.model, tokenizer=lm.tokenizer)
    model.enable_compatibility_mode()
    clean = torch.randint(0, 1000, (1, length), device=lm.device)
    corrupted = clean.clone()
    corrupted[0, :3] = torch.tensor([7, 8, 9], device=lm.device)
    with torch.inference_mode():
        _, cache = model.run_with_cache(clean)
        patching.get_act_patch_resid_pre(
            model, corrupted, cache, lambda logits: logits[0, -1].log_softmax(-1)[5]
        )
    return cells


def run_nnsight(lm: Any, length: int, cells: int) -> int:
    """nnsight's per-cell loop: one traced forward per (layer, position), writing the clean state."""
    from nnsight import LanguageModel

    from ivx.model import components

    model = LanguageModel(lm.model, tokenizer=lm.tokenizer)
    layers = functools.reduce(getattr, components.layout(lm.model)[2].split("."), model)  # the blocks
    clean = torch.randint(0, 1000, (1, length), device=lm.device)
    corrupted = clean.clone()
    corrupted[0, :3] = 7
    with torch.inference_mode():
        with model.trace(clean):
            states = [layer.output[0].save() for layer in layers]
        for i in range(cells):
            layer, pos = i % len(states), i % length
            with model.trace(corrupted):
                layers[layer].output[0][:, pos] = states[layer][:, pos]
                model.output.logits[0, -1].save()
    return cells


def measure(shape: str, dtype: str, workload: str, model_dir: Path, args: argparse.Namespace) -> list[dict]:
    """Every variant of one (shape, dtype, workload), as table rows."""
    from ivx.recipes import prepare

    work = Path(tempfile.mkdtemp(prefix="ivx-gpu-bench-"))
    path = work / "bench.yaml"
    path.write_text(yaml.safe_dump(config(workload, model_dir, args.length, args.device, dtype)))
    prep = prepare.prepare(path)  # loads the model once, outside every timing
    lm, cells = prep.lm, len(prep.plan.cells)
    rows = cells * (10 if workload == "trace" else 1)
    length = prep.prompts[0].length
    run_plain(lm, 2, length)  # warm-up: the first forward touches every weight
    variants: dict[str, Callable[[], int]] = {
        "ivx": lambda: run_ivx(path, lm, work),
        "plain": lambda: run_plain(lm, rows, length) // (rows // cells),
    }
    if workload == "sweep":
        variants["transformer_lens"] = lambda: run_transformer_lens(lm, length, cells)
        variants["nnsight"] = lambda: run_nnsight(lm, length, min(cells, args.peer_cells))
    out = []
    for name, fn in variants.items():
        try:
            row = timed(fn, lm.device)
        except ImportError:
            row = {"skipped": "not installed"}
        except Exception as exc:  # noqa: BLE001 - a peer failing is a row, not the end of the run
            row = {"skipped": f"failed: {type(exc).__name__}: {str(exc)[:60]}"}
        out.append({"shape": shape, "dtype": dtype, "workload": workload, "variant": name, **row})
    from ivx.model import memory

    budget = memory.budget_bytes(prep.cfg.experiment.batch.memory_gb, lm) / 2**30
    for row in out:
        row["budget_gb"] = budget
    return out


def table(rows: list[dict]) -> None:
    """Print the rows side by side with ratios, then the targets, met or not."""
    ivx = {
        (r["shape"], r["dtype"], r["workload"]): r for r in rows if r["variant"] == "ivx" and "seconds" in r
    }
    print(f"{'shape':<12} {'dtype':<9} {'workload':<6} {'variant':<17} {'cells':>6} {'s':>8} {'cells/s':>10} "
          f"{'×plain':>7} {'ivx ×':>7} {'peak GB':>8} {'total GB':>8} {'util %':>6}")  # fmt: skip
    plain = {
        (r["shape"], r["dtype"], r["workload"]): r for r in rows if r["variant"] == "plain" and "seconds" in r
    }
    for r in rows:
        key = (r["shape"], r["dtype"], r["workload"])
        head = f"{r['shape']:<12} {r['dtype']:<9} {r['workload']:<6} {r['variant']:<17}"
        if "seconds" not in r:
            print(f"{head} {r['skipped']}")
            continue
        r["rate"] = r["cells"] / r["seconds"]
        base = plain.get(key)
        ratio = r["rate"] / (base["cells"] / base["seconds"]) if base else math.nan
        mine = ivx.get(key)
        speedup = (mine["cells"] / mine["seconds"]) / r["rate"] if mine else math.nan
        print(f"{head} {r['cells']:>6} {r['seconds']:>8.4f} {r['rate']:>10.1f} {ratio:>7.3g} {speedup:>7.3g} "
              f"{r['peak_gb']:>8.3f} {r['total_gb']:>8.3f} {r['util']:>6.0f}")  # fmt: skip
    verdicts(rows, ivx)


def verdicts(rows: list[dict], ivx: dict[tuple, dict]) -> None:
    """The docstring's targets on the single-corruption sweep: met, not met, or not measured."""
    for key, mine in ivx.items():
        if key[2] != "sweep":
            continue
        where = " ".join(key)
        for peer, target in TARGETS.items():
            other = next(
                (r for r in rows if (r["shape"], r["dtype"], r["workload"]) == key and r["variant"] == peer),
                {},
            )
            if "seconds" not in other:
                print(
                    f"target {where}: ivx ≥ {target}× {peer}: not measured ({other.get('skipped', 'no row')})"
                )
                continue
            ratio = (mine["cells"] / mine["seconds"]) / (other["cells"] / other["seconds"])
            print(
                f"target {where}: ivx ≥ {target}× {peer}: {ratio:.2f}× — {'met' if ratio >= target else 'not met'}"
            )
        if math.isnan(mine["peak_gb"]):
            print(f"target {where}: peak memory within batch.memory_gb: not measured (no CUDA)")
        else:
            met = "met" if mine["peak_gb"] <= mine["budget_gb"] else "not met"
            print(
                f"target {where}: peak {mine['peak_gb']:.2f} GB within batch.memory_gb {mine['budget_gb']:.2f} GB — {met}"
            )


def main() -> None:
    """Build the shapes, measure every (shape, dtype, workload), print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="a 2-layer, width-32 GPT-2; float32; seconds")
    parser.add_argument("--shapes", nargs="+", default=["gpt2-small", "pythia-410m"], choices=list(SHAPES))
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--length", type=int, default=16, help="prompt tokens of the sweep")
    parser.add_argument("--peer-cells", type=int, default=10_000, help="cells nnsight runs (extrapolated)")
    args = parser.parse_args()
    if args.smoke:
        args.shapes, args.dtypes, args.length = ["tiny"], ["float32"], 8
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run with --device cpu (--smoke for the quick check)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="ivx-gpu-models-") as tmp:
        for shape in args.shapes:
            model_dir = build(shape, Path(tmp) / shape)
            for dtype in args.dtypes:
                for workload in ("sweep", "trace"):
                    rows += measure(shape, dtype, workload, model_dir, args)
    print(
        f"device {args.device}"
        + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else "")
    )
    table(rows)


if __name__ == "__main__":
    main()
