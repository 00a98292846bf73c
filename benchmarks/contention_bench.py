"""Contention: the main job alone and beside one and two 2-thread torch neighbours, per thread policy.

The main job is `ivx run configs/causal_trace.yaml --set prompts.limit=20 --set output.plots=false`
(the README's main job, 20 facts), each run a fresh process, timed from its start to its exit
(wall). A neighbour is a separate Python process running 256×256 float32 matmuls on 2 torch
threads with the OpenMP defaults (spin-waiting), as another user's torch job would. Policies:

- off:  `IVX_THREADS=off`, ivx sets nothing: today's behaviour before the thread policy (torch's
        defaults: every core, threads spinning at every barrier);
- auto: ivx's defaults (`OMP_WAIT_POLICY=PASSIVE`, every core this process may use);
- 1:    `IVX_THREADS=1`.

For each (neighbours, policy) the script prints the wall time, its ratio to the idle run of the
same policy and to today's idle run (policy off, no neighbour), the mean 1-minute load average
and the machine's busy share of CPU time during the run, and the manifest's start-up and cell
seconds. Target (issue 29): with one neighbour, ≤ 2.2× the idle time (a fair share is 2×).
The load is the whole machine's: other users' work counts too, so say so beside any figure.

    python benchmarks/contention_bench.py [--neighbours 0 1 2] [--policies off auto 1] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/causal_trace.yaml"
TARGET = 2.2
NEIGHBOUR = """
import torch
torch.set_num_threads(2)
a = torch.randn(256, 256)
b = torch.randn(256, 256)
while True:
    for _ in range(100):
        c = a @ b
"""
POLICY_ENV = {"off": {"IVX_THREADS": "off"}, "auto": {}, "1": {"IVX_THREADS": "1"}}


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment without the caller's OpenMP and ivx thread settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_", "MKL_", "IVX_THREADS"))}
    return {**env, **extra}


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine (/proc/stat)."""
    with open("/proc/stat") as fh:
        fields = [float(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields) - idle, sum(fields)


class Load:
    """The 1-minute load average sampled every half second, and the machine's busy share."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self.stop.wait(0.5):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> Load:
        self.before = cpu_times()
        self.samples.append(os.getloadavg()[0])
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        busy, total = cpu_times()
        self.busy = (busy - self.before[0]) / max(total - self.before[1], 1.0)
        self.mean = statistics.fmean(self.samples)


def main_job(policy: str, limit: int, out: Path) -> dict[str, float]:
    """One run of the main job in a fresh process: wall, load and the manifest's timings."""
    cmd = [sys.executable, "-m", "ivx", "run", CONFIG, "--set", f"prompts.limit={limit}"]
    cmd += ["--set", "output.plots=false", "--quiet", "--out", str(out)]
    with Load() as load:
        started = time.perf_counter()
        proc = subprocess.run(
            cmd, cwd=ROOT, env=clean_env(POLICY_ENV[policy]), capture_output=True, text=True
        )
        wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"main job failed ({policy}):\n{proc.stderr[-2000:]}")
    manifest = json.loads((Path(proc.stdout.strip().splitlines()[-1]) / "manifest.json").read_text())
    start = manifest.get("startup", {}).get("total", float("nan"))
    return {
        "wall": wall,
        "load": load.mean,
        "busy": load.busy,
        "startup": start,
        "cells": manifest["seconds"],
    }


def neighbours(n: int) -> list[subprocess.Popen]:
    """`n` matmul neighbours, started and given time to import torch and begin."""
    procs = [
        subprocess.Popen([sys.executable, "-c", NEIGHBOUR], env=clean_env({"OMP_NUM_THREADS": "2"}))
        for _ in range(n)
    ]
    time.sleep(4.0 if n else 0.0)
    return procs


def stop(procs: list[subprocess.Popen]) -> None:
    """End the neighbours this script started (by their own handles)."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(timeout=30)


def measure(counts: list[int], policies: list[str], limit: int, repeats: int) -> dict[tuple[int, str], list]:
    """Every (neighbours, policy) run `repeats` times, policies interleaved under one set of neighbours."""
    runs: dict[tuple[int, str], list] = {}
    with tempfile.TemporaryDirectory(prefix="ivx-contention-") as tmp:
        for _ in range(repeats):
            for n in counts:
                procs = neighbours(n)
                try:
                    for policy in policies:
                        row = main_job(policy, limit, Path(tmp))
                        runs.setdefault((n, policy), []).append(row)
                        print(
                            f"  {n} neighbours, {policy:>4}: {row['wall']:.1f} s (load {row['load']:.1f})",
                            flush=True,
                        )
                finally:
                    stop(procs)
    return runs


def report(runs: dict[tuple[int, str], list], limit: int) -> None:
    """The side-by-side table: fastest repeat per (neighbours, policy), ratios to idle, loads."""
    best = {key: min(rows, key=lambda r: r["wall"]) for key, rows in runs.items()}
    today = best.get((0, "off"))
    print(
        f"\nivx run {CONFIG} --set prompts.limit={limit} --set output.plots=false  ({os.cpu_count()} cores)"
    )
    head = f"{'neighbours':>10} {'policy':>6} {'wall s':>7} {'×idle':>6} {'×today idle':>11} "
    print(head + f"{'load':>5} {'busy':>5} {'startup s':>9} {'cells s':>7}")
    for (n, policy), row in sorted(best.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        idle = best.get((0, policy))
        ratio = f"{row['wall'] / idle['wall']:.2f}" if idle else "-"
        vs_today = f"{row['wall'] / today['wall']:.2f}" if today else "-"
        print(
            f"{n:>10} {policy:>6} {row['wall']:>7.1f} {ratio:>6} {vs_today:>11} {row['load']:>5.1f} "
            f"{row['busy']:>5.0%} {row['startup']:>9.1f} {row['cells']:>7.1f}"
        )
    for policy in ("auto", "1"):
        if (0, policy) in best and (1, policy) in best:
            ratio = best[(1, policy)]["wall"] / best[(0, policy)]["wall"]
            verdict = "met" if ratio <= TARGET else "not met"
            print(f"target (one neighbour ≤ {TARGET}× idle), policy {policy}: {ratio:.2f}× — {verdict}")
    print("load: the mean 1-minute load average during the run; busy: the machine's busy CPU share")


def main() -> None:
    """Parse the arguments, measure, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neighbours", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--policies", nargs="+", default=["off", "auto", "1"], choices=list(POLICY_ENV))
    parser.add_argument("--limit", type=int, default=20, help="prompts.limit of the main job")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    print(f"load before: {os.getloadavg()[0]:.2f}", flush=True)
    runs = measure(args.neighbours, args.policies, args.limit, args.repeats)
    report(runs, args.limit)


if __name__ == "__main__":
    main()
