"""Where cells run: `local` (this process) or `ray` (actors on a Ray cluster, one model replica each).

The driver (`ivx.recipes.run`) prepares the baselines, asks a backend for the outputs of the cells
still to do, and stays the only writer of the run directory. A backend receives batches of cells
and yields lists of `loop.CellOutput` as they finish, in any order; every method of the table
(`ivx.methods.registry`) runs on every backend.

Ray results are byte-identical to local ones because an actor runs exactly the forwards the
local run would: every actor builds the same `Executor` from the same config (same plan, same
noise, same baselines, packing costed over the whole plan) and runs the experiment's method on
its tasks, and the driver cuts the cells into tasks the method's way (`registry.tasks`): exact
patching's batches (`Executor.steps`) only where the loop holds no pending work (no deferred
unembedding waiting for more rows, `loop.segments`), whole prompts for path patching and
attribution (which run prompt by prompt) — so no forward or unembedding gets different rows.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ivx.core.errors import ConfigError
from ivx.engine import answers
from ivx.methods import registry
from ivx.recipes import prepare

if TYPE_CHECKING:
    from ivx.engine.executor import Executor
    from ivx.engine.loop import CellOutput
    from ivx.plan.grid import Cell
    from ivx.plan.prepared import Prepared

EXTRA = "pip install 'ivx-interventions[ray]'  (or, in a checkout: pip install -e \".[ray]\")"


@dataclass(frozen=True)
class Settings:
    """The backend of one run: its name, the Ray options, and how an actor rebuilds the experiment."""

    name: str
    ray: Any  # schema.Ray, with `address` from the command line applied
    path: str
    overrides: tuple[str, ...]


def resolve(
    prep: Prepared,
    path: str | Path,
    overrides: tuple[str, ...],
    name: str | None = None,
    address: str | None = None,
) -> Settings:
    """The run's backend (command line over config); a ConfigError when it cannot run here."""
    exp = prep.cfg.experiment
    name = name or exp.backend
    problems = []
    if name not in BACKENDS:
        valid = ", ".join(BACKENDS)
        problems.append(prep.cfg.problem(("backend",), f"unknown backend {name!r}; valid: {valid}"))
    problems += registry.backend_problems(prep.cfg, name)
    if name == "ray" and importlib.util.find_spec("ray") is None:
        problems.append(
            prep.cfg.problem(("backend",), f"backend 'ray' needs Ray, which is not installed: {EXTRA}")
        )
    if problems:
        raise ConfigError(problems)
    ray = exp.ray.model_copy(update={"address": address}) if address else exp.ray
    return Settings(name, ray, str(Path(path).resolve()), tuple(overrides))


class Backend(Protocol):
    """Where cells run: given a prepared executor and the cells to do, outputs per finished batch."""

    def __call__(
        self, executor: Executor, todo: list[Cell], settings: Settings, prep: Prepared
    ) -> Iterator[list[CellOutput]]: ...


def execute(
    executor: Executor, todo: list[Cell], settings: Settings, prep: Prepared
) -> Iterator[list[CellOutput]]:
    """Outputs of `todo` cells of `prep`, a list per finished batch (task), from the chosen backend."""
    return BACKENDS[settings.name](executor, todo, settings, prep)


def _local(
    executor: Executor, todo: list[Cell], settings: Settings, prep: Prepared
) -> Iterator[list[CellOutput]]:
    """This process: the experiment's method on the executor."""
    return registry.execute(executor, todo)


def tasks(executor: Executor, todo: list[Cell], task_cells: int) -> list[list[Cell]]:
    """`todo` cut into tasks of about `task_cells` cells that reproduce the local run's forwards.

    The method's own cut (`registry.tasks`): the exact loop's batches where no deferred-head rows
    are pending, whole prompts for the methods that run prompt by prompt.
    """
    return registry.tasks(executor, todo, task_cells)


def fingerprint(prep: Prepared) -> str:
    """A digest of a plan and its prompts: actors check they rebuilt the driver's experiment."""
    import hashlib
    import json

    text = json.dumps([prep.plan.to_rows(), [list(p.base_ids) for p in prep.prompts]], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


class Worker:
    """A Ray actor: one model replica with its own Executor and baselines (all prompts, once)."""

    def __init__(
        self, path: str, overrides: tuple[str, ...], label: str | None, threads: int, expected: str
    ) -> None:
        import torch

        torch.set_num_threads(threads)
        preps = prepare.prepare_all(path, overrides)
        prep = next(p for p in preps if p.label == label)
        if fingerprint(prep) != expected:
            raise RuntimeError(
                "this actor expanded a different plan than the driver (another ivx version, config "
                "or data file on this node, or trace.select_correct deciding differently on its device)"
            )
        torch.manual_seed(prep.cfg.experiment.seed)
        self.executor = answers.executor(prep.cfg, prep.lm, prep.prompts, prep.plan)
        with torch.inference_mode():
            self.executor.prepare()
        self.cells = {cell.index: cell for cell in prep.plan.cells}

    def run(self, indices: list[int]) -> list[CellOutput]:
        """Outputs of the cells with these plan indices (one task)."""
        import torch

        with torch.inference_mode():
            cells = [self.cells[i] for i in indices]
            return [out for batch in registry.execute(self.executor, cells) for out in batch]

    def pid(self) -> int:
        """The actor's process id (tests kill it)."""
        return os.getpid()


def connect(options: Any) -> bool:
    """Join the cluster at `options.address`, or start a local Ray; True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    # actors import the same ivx as the driver (a checkout on PYTHONPATH, not another install)
    source = str(Path(__file__).resolve().parents[2])
    paths = os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH")) if p)
    env = {"env_vars": {"PYTHONPATH": paths}}
    kwargs: dict[str, Any] = {"runtime_env": env, "log_to_driver": False, "logging_level": "ERROR"}
    if options.address is None:
        cpus = max(options.actors * options.num_cpus, 1)
        kwargs.update(
            num_cpus=math.ceil(cpus),
            object_store_memory=options.object_store_mb * 2**20,
            include_dashboard=False,
        )
    ray.init(address=options.address, **kwargs)
    return True


def _ray_outputs(
    executor: Executor, todo: list[Cell], settings: Settings, prep: Prepared
) -> Iterator[list[CellOutput]]:
    import ray
    import torch

    opts = settings.ray
    per_task = (
        opts.task_cells if opts.task_cells != "auto" else max(1, math.ceil(len(todo) / (4 * opts.actors)))
    )
    queue = tasks(executor, todo, per_task)
    if not queue:
        return
    started = connect(opts)
    actor_class = ray.remote(Worker)
    threads = torch.get_num_threads() if opts.threads == "auto" else opts.threads
    actors: list[Any] = [
        actor_class.options(
            name=f"ivx-worker-{os.getpid()}-{id(executor)}-{i}",
            num_cpus=opts.num_cpus,
            num_gpus=opts.num_gpus,
            max_restarts=opts.max_restarts,
            max_task_retries=opts.max_restarts,
        ).remote(settings.path, settings.overrides, prep.label, threads, fingerprint(prep))
        for i in range(min(opts.actors, len(queue)))
    ]
    try:
        yield from _dispatch(actors, queue)
    except ray.exceptions.RayError as exc:  # restarts exhausted, or an actor failed to start
        raise RuntimeError(f"Ray backend: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from exc
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)
        if started:
            ray.shutdown()


BACKENDS: dict[str, Backend] = {"local": _local, "ray": _ray_outputs}


def _dispatch(actors: list[Any], queue: list[list[Cell]]) -> Iterator[list[CellOutput]]:
    """Keep two tasks in flight per actor; yield each task's outputs as it finishes."""
    import ray

    waiting = list(reversed(queue))
    running: dict[Any, Any] = {}

    def submit(actor: Any) -> None:
        if waiting:
            running[actor.run.remote([cell.index for cell in waiting.pop()])] = actor

    for actor in actors:
        submit(actor)
        submit(actor)
    while running:
        ready, _ = ray.wait(list(running), num_returns=1)
        actor = running.pop(ready[0])
        outputs = ray.get(ready[0])
        submit(actor)
        yield outputs
