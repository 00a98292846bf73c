"""`ivx train`: interchange intervention training (IIT) of DAS interventions, from a YAML file.

For each grid point (e.g. layer × position × low_rank_dimension) a fresh trainable intervention
is trained with the model frozen: the base prompt runs with the learned subspace interchanged
from the source prompt's activation at the same site, and the loss is the cross entropy of the
counterfactual target. Interchange intervention accuracy (IIA) on held-out records says whether
the hypothesised variable lives in that subspace; an untrained random rotation of the same
size is the control.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ivx.config import sweep as sweeps
from ivx.config.settings import Train
from ivx.core.errors import ConfigError
from ivx.methods import das_controls
from ivx.methods.iit import Example, examples_of, train_point
from ivx.model import components
from ivx.plan import grid as plan
from ivx.plan.edits import resolve_edits
from ivx.recipes.prepare import prepare_all
from ivx.results import controls as result_controls
from ivx.results import rundir, train_report
from ivx.results.publish import publish
from ivx.results.session import recorded_config
from ivx.store import bundle

__all__ = ["Training", "plan_training", "split", "train_run"]

if TYPE_CHECKING:
    from ivx.config.loader import LoadedConfig
    from ivx.config.schema import Intervention
    from ivx.core.errors import Problem
    from ivx.model.components import Site
    from ivx.model.loading import LoadedModel
    from ivx.plan.edits import Edit
    from ivx.plan.grid import Cell
    from ivx.plan.tokenization import TokenizedPrompt
    from ivx.results.rundir import Manifest


def _examples(
    lm: LoadedModel, cfg: LoadedConfig, iv: Intervention, site: Site, prompts: Sequence[TokenizedPrompt]
) -> list[Example]:
    """Examples of one concrete trainable intervention, planned like `ivx train` plans it."""

    problems: list[Problem] = []
    planned = []
    for p in prompts:
        edits = resolve_edits(cfg, lm.info, p, 0, iv, problems, mode="train")
        planned += [(p, e) for e in edits]
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)))
    return examples_of(lm, site, planned)


def split(n: int, eval_split: float, seed: int) -> tuple[set[int], list[int]]:
    """(held-out indices, training indices): a seeded shuffle of the records."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_held = max(1, int(n * eval_split))
    return set(order[:n_held]), order[n_held:]


@dataclass
class Training:
    """A prepared training run: config, frozen model, prompts, cells per grid point, the split."""

    cfg: LoadedConfig
    config: Path
    overrides: tuple[str, ...]
    lm: LoadedModel
    prompts: list[TokenizedPrompt]
    points: list[list[Cell]]  # the cells (one per record) of each grid point, in grid order
    held: set[int]
    train: list[int]

    @property
    def settings(self) -> Train:

        return self.cfg.experiment.train or Train.model_validate({})

    def model_info(self) -> dict[str, Any]:
        spec, info = self.cfg.experiment.model, self.lm.info
        return {
            "name": spec.name,
            "revision": spec.revision,
            "d_model": info.d_model,
            "n_layers": info.n_layers,
        }


def plan_training(config: Path, overrides: tuple[str, ...], max_cells: int | None = None) -> Training:
    """Prepare the config for `ivx train` (as `ivx validate --for train` does: every record up to
    `max_records`, every point, the subspace widths, the split) and freeze the model."""

    (prep,) = prepare_all(config, overrides, max_cells=max_cells, mode="train")
    for param in prep.lm.model.parameters():  # the model is frozen: only the intervention trains
        param.requires_grad_(False)
    points: dict[tuple[tuple[str, Any], ...], list[Cell]] = {}
    for cell in prep.plan.cells:
        points.setdefault(cell.point, []).append(cell)
    settings = prep.cfg.experiment.train or Train.model_validate({})
    held, train = split(len(prep.prompts), settings.eval_split, prep.cfg.experiment.seed)
    return Training(prep.cfg, config, overrides, prep.lm, prep.prompts, list(points.values()), held, train)


def _open(training: Training, out_root: str | None, resume: Path | None) -> tuple[Path, Manifest]:

    exp = training.cfg.experiment
    if resume is not None:
        manifest = rundir.Manifest.read(resume)
        manifest.update(status="running")
        return resume, manifest
    run_dir = rundir.create(out_root or exp.output.root, exp.name)
    rundir.write_text(run_dir / "config.yaml", training.cfg.text)
    manifest = rundir.Manifest.start(
        run_dir,
        name=exp.name,
        kind="train",
        config=str(Path(training.config).resolve()),
        overrides=list(training.overrides),
        seed=exp.seed,
        device=str(training.lm.device),
        model=training.model_info(),
    )
    return run_dir, manifest


def _train_one(
    training: Training, index: int, cells: list[Cell], run_dir: Path, log: Callable[[str], object]
) -> tuple[dict[str, Any], dict[str, Any], Intervention, Edit]:
    """Train grid point `index`: its result row, trained module output, concrete intervention, site edit."""

    point = dict(cells[0].point)
    edit = cells[0].edits[0]
    iv = plan.substitute(training.cfg.experiment.interventions[0], point)
    site = components.resolve(training.lm.model, training.lm.info, edit.component, edit.layer)
    by_prompt = {c.prompt: (training.prompts[c.prompt], c.edits[0]) for c in cells}

    def examples(lm: LoadedModel) -> tuple[list[Example], list[Example]]:
        return (
            examples_of(lm, site, [by_prompt[i] for i in training.train if i in by_prompt]),
            examples_of(lm, site, [by_prompt[i] for i in sorted(training.held) if i in by_prompt]),
        )

    train, held = examples(training.lm)
    log(
        f"[{index + 1}/{len(training.points)}] {point or 'single site'}: {iv.kind} at "
        f"{iv.component}[{edit.layer}] position {iv.position}, "
        f"{len(train)} train / {len(held)} held-out records"
    )
    seed = training.cfg.experiment.seed + index
    checkpoint = run_dir / "checkpoints" / f"point{index}.pt"
    out = train_point(training.lm, site, iv, training.settings, train, held, seed, log, checkpoint)
    row = {
        "point": index,
        **point,
        "iia": out["iia"],
        "train_iia": out["train_iia"],
        "control_iia": out["control_iia"],
        "epochs": len(out["history"]),
    }
    if training.cfg.experiment.controls:
        row.update(
            das_controls.das_point(training.lm, training.cfg, iv, site, examples, training.settings, seed)
        )
    return row, out, iv, edit


def _append(
    run_dir: Path, index: int, row: dict[str, Any], history: list[dict[str, Any]], done: set[str]
) -> None:
    """Record a trained point: its result row (once, also across resumes) and its training curve."""
    point = {k: v for k, v in row.items() if k not in ("point", "epochs") and not k.endswith("iia")}
    if str(index) not in done:
        with (run_dir / "results.jsonl").open("a") as fh:
            fh.write(json.dumps(row) + "\n")
    with (run_dir / "metrics.jsonl").open("a") as fh:
        for entry in history:
            fh.write(json.dumps({"point": index, **point, **entry}) + "\n")


def _done_points(run_dir: Path) -> set[str]:
    results = run_dir / "results.jsonl"
    if not results.exists():
        return set()
    return {str(json.loads(line)["point"]) for line in results.read_text().splitlines()}


def _train_grid(training: Training, run_dir: Path, log: Callable[[str], object]) -> dict[str, Any]:
    """Train every grid point; write interventions.safetensors; the best point for the bundle."""
    from safetensors.torch import save_file

    (run_dir / "checkpoints").mkdir(exist_ok=True)
    done = _done_points(run_dir)
    results, tensors = [], {}
    best: dict[str, Any] | None = None
    for index, cells in enumerate(training.points):
        row, out, iv, edit = _train_one(training, index, cells, run_dir, log)
        results.append(row)
        _append(run_dir, index, row, out["history"], done)
        params = out["module"].params()
        name = iv.name or "das"
        for key, value in params.items():
            tensors[f"{name}.point{index}.{key}"] = value.cpu().contiguous()
        if best is None or out["iia"] > best["iia"]:
            concrete = iv.model_dump(mode="json", exclude_none=True)
            concrete.update({"layer": edit.layer, "name": name, "bundle": "."})
            params_cpu = {f"{name}.{k}": v.cpu() for k, v in params.items()}
            best = {"iia": out["iia"], "intervention": concrete, "params": params_cpu, "point": index}
    save_file(tensors, str(run_dir / "interventions.safetensors"))
    assert best is not None  # a plan has at least one point
    return {"results": results, **best}


def _write_bundle(training: Training, run_dir: Path, trained: dict[str, Any]) -> None:
    """The best point as a bundle, interventions.yaml, summary.json and the training report."""
    import yaml

    bundle.save(run_dir / "bundle", [trained["intervention"]], trained["params"], training.model_info())
    rundir.write_text(
        run_dir / "interventions.yaml", yaml.safe_dump({"interventions": [trained["intervention"]]})
    )
    axes = [d.name for d in sweeps.dimensions(training.cfg.experiment.sweep)]
    summary = {
        "points": trained["results"],
        "best_point": trained["point"],
        "best_iia": trained["iia"],
        "axes": axes,
    }
    controlled = bool(training.cfg.experiment.controls)
    if controlled:
        summary["warnings"] = das_controls.das_warnings(trained["results"])
    rundir.write_json(run_dir / "summary.json", summary)
    train_report.write(run_dir, summary)
    if controlled:
        lines = result_controls.das_outputs(run_dir, summary)
        rundir.write_text(run_dir / "controls.txt", "\n".join(lines) + "\n")
    with (run_dir / "bundle" / "README.md").open("a") as fh:
        fh.write(train_report.bundle_note(summary, run_dir))


def train_run(
    config: Path,
    overrides: tuple[str, ...],
    out_root: str | None,
    resume: Path | None,
    log: Callable[[str], object],
    max_cells: int | None = None,
) -> Path:
    """The `ivx train` recipe: prepare, then every grid point trained, evaluated and bundled."""
    if resume is not None:
        config, overrides = recorded_config(resume)  # the same resume path as `ivx run`
    training = plan_training(config, overrides, max_cells)
    run_dir, manifest = _open(training, out_root, resume)
    started = time.perf_counter()
    try:
        trained = _train_grid(training, run_dir, log)
        _write_bundle(training, run_dir, trained)
    except BaseException as exc:
        manifest.finish("failed", error=f"{type(exc).__name__}: {exc}")
        raise
    manifest.finish("complete", seconds=round(time.perf_counter() - started, 1))
    publish(run_dir, training.cfg.experiment.output)  # report.html, trackers: only warn on failure
    return run_dir
