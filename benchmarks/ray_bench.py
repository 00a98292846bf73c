"""Ray backend scaling: cells/s with 1 vs 2 CPU actors (one torch thread each) on this machine.

Workload: the shipped causal trace (configs/causal_trace.yaml) on ivx-toy, `--prompts` facts.
The driver prepares the baselines once, outside the timing; each measurement starts a fresh local
Ray (2 CPUs), starts the actors (each loads the model and computes its baselines), runs every
cell through `backends.execute` and stops Ray. Reported per actor count:
- total: wall seconds from starting Ray to the last output (what a user waits);
- steady: cells/s after the first task returned (actor start-up excluded);
and the ratio 2 vs 1 actors. Also the local backend at 1 thread, and the measured per-task cost,
from which the N-GPU estimate follows: N actors give ~N× while tasks outnumber actors and each
task's compute dominates its transfer (outputs are metric rows plus optional logits).

    python benchmarks/ray_bench.py [--prompts 40] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(prep, executor, actors: int, settings) -> dict[str, float]:
    """Run every cell on `actors` actors of a fresh local Ray; seconds and cells/s."""
    import ray

    from ivx.recipes import backends

    opts = settings.ray.model_copy(update={"actors": actors, "threads": 1, "num_cpus": 1})
    run = backends.Settings("ray", opts, settings.path, settings.overrides)
    cells = list(prep.plan.cells)
    executor.report = {"groups": []}
    executor.noop_cells = 0
    t0 = time.perf_counter()
    first = None
    done = 0
    for outputs in backends.execute(executor, cells, run, prep):
        done += len(outputs)
        if first is None:
            first, first_done = time.perf_counter(), done
    end = time.perf_counter()
    assert not ray.is_initialized()
    steady = (done - first_done) / max(end - first, 1e-9)
    return {
        "total_s": end - t0,
        "cells": done,
        "cells_per_s": done / (end - t0),
        "steady_cells_per_s": steady,
    }


def local(prep, executor) -> dict[str, float]:
    """The local backend at one thread."""
    import torch

    torch.set_num_threads(1)
    executor.report = {"groups": []}
    t0 = time.perf_counter()
    with torch.inference_mode():
        done = sum(len(o) for o in executor.execute(list(prep.plan.cells)))
    seconds = time.perf_counter() - t0
    return {"total_s": seconds, "cells": done, "cells_per_s": done / seconds}


def main() -> None:
    """Print the 1-vs-2-actor comparison."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    import torch

    from ivx.engine import executor as runner
    from ivx.recipes import backends, prepare

    config = ROOT / "configs" / "causal_trace.yaml"
    overrides = (f"prompts.limit={args.prompts}", "output.plots=false")
    prep = prepare.prepare_all(config, overrides)[0]
    executor = runner.Executor(prep.cfg, prep.lm, prep.prompts, prep.plan)
    with torch.inference_mode():
        executor.prepare()
    settings = backends.resolve(prep, config, overrides, "ray")
    results: dict[str, list[dict[str, float]]] = {"local": [], "1": [], "2": []}
    for _ in range(args.repeats):
        results["local"].append(local(prep, executor))
        for actors in (1, 2):
            results[str(actors)].append(measure(prep, executor, actors, settings))
    best = {k: max(v, key=lambda r: r["cells_per_s"]) for k, v in results.items()}
    print(f"{len(prep.plan.cells)} cells, {args.prompts} facts, load {os.getloadavg()[0]:.1f}")
    for key, r in best.items():
        name = "local, 1 thread" if key == "local" else f"ray, {key} actor(s) x 1 thread"
        steady = f", steady {r['steady_cells_per_s']:.0f} cells/s" if "steady_cells_per_s" in r else ""
        print(f"{name:30s} {r['total_s']:7.1f} s  {r['cells_per_s']:7.0f} cells/s{steady}")
    ratio = best["2"]["cells_per_s"] / best["1"]["cells_per_s"]
    steady = best["2"]["steady_cells_per_s"] / best["1"]["steady_cells_per_s"]
    print(f"2 vs 1 actors: {ratio:.2f}x overall, {steady:.2f}x steady")


if __name__ == "__main__":
    main()
