"""One `ivx run` in its run directory: open it (new or resumed), its plan files, results and clock."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from ivx.core import startup
from ivx.core.errors import ConfigError
from ivx.model import loading as models
from ivx.results import rundir
from ivx.store import fingerprint

if TYPE_CHECKING:
    from ivx.engine.executor import Executor
    from ivx.plan.prepared import Prepared


class Clock:
    """Wall time and no-op cells across resumes, written into the manifest when the run ends."""

    def __init__(self, manifest: rundir.Manifest, resumed: bool) -> None:
        self.manifest = manifest
        self.started = time.perf_counter()
        self.spent = float(manifest.data.get("seconds") or 0.0)
        self.noop_before = int(manifest.data.get("cells_noop") or 0) if resumed else 0

    def seconds(self) -> float:
        """Seconds spent in this run directory, over every resume."""
        return self.spent + time.perf_counter() - self.started

    def fail(self, exc: BaseException, executors: list[Executor]) -> None:
        """Mark the run failed."""
        self.manifest.fail(exc, self.seconds(), self.noop_before + _noop(executors))

    def finish(self, preps: list[Prepared], executors: list[Executor], cells_done: int) -> None:
        """Mark the run complete, with what ran and how (the executors' shortcut reports)."""
        labelled = preps[0].label is not None
        self.manifest.finish(
            "complete",
            error=None,
            seconds=round(self.seconds(), 3),
            cells_done=cells_done,
            cells_noop=self.noop_before + _noop(executors),
            shortcuts=(
                {p.label: e.report for p, e in zip(preps, executors, strict=True)}
                if labelled
                else executors[0].report
            ),
        )


def _noop(executors: list[Executor]) -> int:
    return sum(e.noop_cells for e in executors)


def results(run_dir: Path, preps: list[Prepared], resumed: bool) -> tuple[rundir.Results, set[int]]:
    """The plan files, the results table (repaired) and the cells already done (verified on resume)."""
    write_plan(run_dir, preps)  # rewritten on resume: a kill or a full disk may have lost it
    table = rundir.Results(run_dir)
    table.repair()
    done = table.done_cells()
    if resumed:
        done = table.verified(done, run_dir / "tensors.parts", preps[0].cfg.experiment.output.logits)
    return table, done


def write_plan(run_dir: Path, preps: list[Prepared]) -> None:
    """resolved.yaml and plan.jsonl (deterministic: a resume rewrites the same bytes)."""
    labelled = preps[0].label is not None
    rundir.write_text(run_dir / "resolved.yaml", _resolved(preps[0]))
    plan_rows = [
        {**row, **({"corruption": p.label} if labelled else {})} for p in preps for row in p.plan.to_rows()
    ]
    rundir.write_text(run_dir / "plan.jsonl", "".join(json.dumps(r) + "\n" for r in plan_rows))


def _resolved(prep: Prepared) -> str:
    data = prep.cfg.experiment.model_dump(mode="json")
    data["prompts"] = [r.model_dump(exclude_none=True) for r in prep.cfg.records]
    data["model"]["layers"] = prep.lm.info.n_layers
    return yaml.safe_dump(data, sort_keys=False)


def recorded_config(resume: Path) -> tuple[Path, tuple[str, ...]]:
    """The config file and --set overrides a run was started with."""
    previous = rundir.Manifest.read(resume).data
    original = Path(previous.get("config") or "")
    # the original file (relative prompt files resolve next to it), else the run's copy
    path = original if original.is_file() else resume / "config.yaml"
    return path, tuple(previous.get("overrides", []))


def open_dir(
    preps: list[Prepared],
    path: str | Path,
    overrides: tuple[str, ...],
    out_root: str | None,
    resume: Path | None,
    on_start: Callable[[Path], None],
    stack: contextlib.ExitStack,
) -> tuple[Path, rundir.Manifest]:
    """Check a resumed run's inputs and reopen it, or create a new run directory and manifest."""

    prep = preps[0]
    digest = hashlib.sha256(prep.cfg.text.encode()).hexdigest()
    with startup.timed("hashing"):
        inputs = fingerprint.inputs(prep.cfg, prep.lm)
    if resume is None:
        return _create(preps, path, overrides, out_root, on_start, stack, digest, inputs)
    previous = rundir.Manifest.read(resume).data
    fingerprint.check(prep.cfg, resume, previous.get("inputs"), inputs)
    if previous.get("config_sha256") not in (None, digest):
        raise ConfigError(
            [
                prep.cfg.problem(
                    (),
                    f"this config changed since run {resume} started; resuming would mix "
                    "results of two experiments (start a new run instead)",
                )
            ]
        )
    on_start(resume)
    manifest = rundir.Manifest.read(resume)
    manifest.update(status="running", resumed=rundir._now(), error=None)
    return resume, manifest


def _create(
    preps: list[Prepared],
    path: str | Path,
    overrides: tuple[str, ...],
    out_root: str | None,
    on_start: Callable[[Path], None],
    stack: contextlib.ExitStack,
    digest: str,
    inputs: dict[str, str],
) -> tuple[Path, rundir.Manifest]:
    """A new run directory (locked), its config copy and a `running` manifest."""

    prep = preps[0]
    exp = prep.cfg.experiment
    run_dir = rundir.create(out_root or exp.output.root, exp.name)
    stack.enter_context(rundir.Lock(run_dir))
    on_start(run_dir)
    rundir.write_text(run_dir / "config.yaml", prep.cfg.text)
    manifest = rundir.Manifest.start(
        run_dir,
        name=exp.name,
        config=str(Path(path).resolve()),
        config_sha256=digest,
        overrides=list(overrides),
        model={
            "name": exp.model.name,
            "revision": prep.lm.revision,
            "path": prep.lm.path,
            "model_type": prep.lm.info.model_type,
            "d_model": prep.lm.info.d_model,
            "n_layers": prep.lm.info.n_layers,
        },
        device=models.placement(prep.lm),
        dtype=str(prep.lm.dtype).removeprefix("torch."),
        seed=exp.seed,
        cells=sum(len(p.plan.cells) for p in preps),
        prompts=len(prep.prompts),
        corruptions=[p.label for p in preps] if prep.label is not None else None,
        inputs=inputs,
    )
    return run_dir, manifest
