"""The `ivx run` recipe, top to bottom: prepare → run directory → baselines and cells → controls → outputs.

The recipe only orchestrates: `prepare` checks and plans, the backend computes cells with the
experiment's method (`ivx.methods.registry`), the controls run here, and the writers in
`ivx.results` write what they are given. Progress reaches the terminal through a callback.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from ivx.core import startup, threads
from ivx.engine import answers
from ivx.engine.executor import Executor
from ivx.methods import controls
from ivx.plan import estimate
from ivx.plan.prepared import Prepared
from ivx.recipes import backends
from ivx.recipes.prepare import prepare_all
from ivx.results import outputs, rundir, session
from ivx.results.progress import ProgressBar
from ivx.results.publish import publish

# given the number of cells to do, a context that yields `advance(n)`
Progress = Callable[[int], AbstractContextManager[Callable[[int], None]]]


def _progress(progress: bool | Progress | None) -> Progress | None:
    """A progress callback: the terminal bar for `True`, none for `False`/`None`."""
    if progress is True:
        return lambda total: ProgressBar(True, total)
    return progress or None


def run(
    path: str | Path,
    overrides: tuple[str, ...] = (),
    out_root: str | None = None,
    resume: Path | None = None,
    progress: bool | Progress | None = True,
    lm: Any = None,
    on_start: Callable[[Path], None] | None = None,
    max_cells: int | None = None,
    backend: str | None = None,
    address: str | None = None,
) -> Path:
    """Execute an experiment into a new (or resumed) run directory and return its path.

    One process at a time writes a run directory (rundir.Lock); resuming a complete run does
    nothing; `on_start` is called with the run directory once it exists. `backend` / `address`
    (local | ray, a Ray cluster) override the config's `backend` / `ray.address`. `progress` is
    called with the number of cells to do (`True`: a progress bar on stderr).
    """
    with contextlib.ExitStack() as stack:
        if resume is not None:
            stack.enter_context(rundir.Lock(resume))
            if rundir.Manifest.read(resume).data["status"] == "complete":
                return resume
        hooks = (on_start or (lambda _: None), max_cells, (backend, address))
        return _run(path, overrides, out_root, resume, _progress(progress), lm, hooks, stack)


def _run(
    path: str | Path,
    overrides: tuple[str, ...],
    out_root: str | None,
    resume: Path | None,
    progress: Progress | None,
    lm: Any,
    hooks: tuple[Callable[[Path], None], int | None, tuple[str | None, str | None]],
    stack: contextlib.ExitStack,
) -> Path:
    """The recipe: config → plan → run directory → baselines and cells per variant → outputs."""
    threads.configure()  # before torch loads: its OpenMP runtime reads the wait policy only then
    with startup.timed("imports"):
        import torch

    if resume is not None:
        path, overrides = session.recorded_config(resume)
    on_start, max_cells, (backend, address) = hooks
    preps = prepare_all(path, overrides, lm, max_cells=max_cells)
    prep = preps[0]
    policy = threads.configure(prep.cfg.experiment.threads)
    settings = backends.resolve(prep, path, overrides, backend, address)
    warning = estimate.size_warning(preps)
    if warning and progress is not None:
        print(f"warning: {warning}", file=sys.stderr)
    torch.manual_seed(prep.cfg.experiment.seed)
    run_dir, manifest = session.open_dir(preps, path, overrides, out_root, resume, on_start, stack)
    manifest.update(threads=policy.record(), startup=startup.record())
    clock = session.Clock(manifest, resume is not None)
    executors: list[Executor] = []
    try:
        results, done = session.results(run_dir, preps, resume is not None)
        with torch.inference_mode():
            _execute(preps, executors, done, settings, results, run_dir / "tensors.parts", progress)
            rows = results.rows()
            ran = {name: controls.run(preps, name) for name in _run_controls(prep)}
            outputs.write(run_dir, preps, executors, rows, results, *outputs.axes_and_metrics(prep), ran)
    except BaseException as exc:
        clock.fail(exc, executors)
        raise
    clock.finish(preps, executors, len(rows))
    publish(run_dir, prep.cfg.experiment.output)  # report.html, trackers: only warn on failure
    return run_dir


def _run_controls(prep: Prepared) -> list[str]:
    """The controls this run computes beside the real one (config order)."""
    return [name for name in prep.cfg.experiment.controls if name in controls.RUN_CONTROLS]


def _execute(
    preps: list[Prepared],
    executors: list[Executor],
    done: set[int],
    settings: backends.Settings,
    results: rundir.Results,
    parts: Path,
    progress: Progress | None,
) -> None:
    """Per variant: baselines, then the cells not yet done from the backend, stored batch by batch."""
    exp = preps[0].cfg.experiment
    label_rows = preps[0].label is not None
    todo_total = sum(1 for p in preps for c in p.plan.cells if c.index not in done)
    with (progress or _silent)(todo_total) as advance:
        for variant in preps:
            executor = answers.executor(variant.cfg, variant.lm, variant.prompts, variant.plan)
            executor.prepare()
            executors.append(executor)
            todo = [c for c in variant.plan.cells if c.index not in done]
            batches = backends.execute(executor, todo, settings, variant)
            for n_batch, batch in enumerate(batches):
                label = variant.label if label_rows else None
                outputs.store(batch, label, exp.output.logits, parts, n_batch, results)
                advance(len(batch))


@contextlib.contextmanager
def _silent(total: int) -> Any:
    """No progress display."""
    yield lambda n: None
