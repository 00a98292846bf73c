"""Experiment trackers a lab already uses (`output.trackers: [wandb, mlflow]`): the resolved config as
parameters, the summary's metrics, the figures and the run directory as an artifact, under the
run's name. Each tracker is a row of `TRACKERS`; the packages are optional extras and imported
only here. A tracker that fails warns and never touches the run directory's results."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ivx.results.report import payload


def config(run_dir: Path) -> dict[str, Any]:
    """The resolved config as a dict, the prompt list replaced by its count (a tracker's config)."""
    import yaml

    file = run_dir / "resolved.yaml"
    if not file.is_file():
        file = run_dir / "config.yaml"
    loaded = yaml.safe_load(file.read_text()) if file.is_file() else {}
    out = dict(loaded) if isinstance(loaded, dict) else {}
    if isinstance(out.get("prompts"), list):
        out["prompts"] = {"count": len(out["prompts"])}
    return out


def params(run_dir: Path) -> dict[str, str]:
    """The resolved config flattened to dotted keys (`model.name`), values as JSON text of at most
    250 characters (MLflow's parameters are short strings)."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = json.dumps(value)[:250]

    walk("", config(run_dir))
    return out


def metrics(summary: dict[str, Any]) -> dict[str, float]:
    """Summary numbers as tracker metrics: a single point's means, else each metric's max, min and
    mean over the grid; DAS's best IIA; attribution's verification correlations."""
    out: dict[str, float] = {}
    grid = summary.get("grid") or []
    for metric in summary.get("metrics", []):
        values = [e[metric] for e in grid if isinstance(e.get(metric), int | float)]
        if len(grid) == 1 and values:
            out[metric] = float(values[0])
        elif values:
            out.update({f"{metric}/max": max(values), f"{metric}/min": min(values)})
            out[f"{metric}/mean"] = sum(values) / len(values)
    if isinstance(summary.get("best_iia"), int | float):
        out["best_iia"] = float(summary["best_iia"])
    verification = (summary.get("attribution_verification") or {}).get("metrics") or {}
    for metric, stats in verification.items():
        for key in ("pearson", "spearman", "top_k_overlap"):
            if isinstance(stats.get(key), int | float):
                out[f"verification/{metric}/{key}"] = float(stats[key])
    return out


def _name(run_dir: Path) -> str:
    return run_dir.name


def _figures(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "plots").glob("*.png")) if (run_dir / "plots").is_dir() else []


def log_wandb(run_dir: Path) -> None:
    """One W&B run (project `WANDB_PROJECT`, default ivx; `WANDB_MODE=offline` works offline)."""
    import wandb

    summary = payload.read_json(run_dir / "summary.json")
    run = wandb.init(
        project=os.environ.get("WANDB_PROJECT", "ivx"),
        name=_name(run_dir),
        config=config(run_dir),
        job_type="ivx-run",
        reinit="finish_previous",
    )
    try:
        run.log({**metrics(summary), **{f"plots/{p.stem}": wandb.Image(str(p)) for p in _figures(run_dir)}})
        artifact = wandb.Artifact(_artifact_name(run_dir), type="ivx-run")
        artifact.add_dir(str(run_dir))
        run.log_artifact(artifact)
    finally:
        run.finish()


def _artifact_name(run_dir: Path) -> str:
    """W&B artifact names allow letters, digits, dashes, underscores and dots."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in run_dir.name)


def log_mlflow(run_dir: Path) -> None:
    """One MLflow run (tracking URI `MLFLOW_TRACKING_URI`, experiment `MLFLOW_EXPERIMENT_NAME`,
    default ivx): parameters, metrics, plots/ and the whole run directory under `run/`."""
    import mlflow

    summary = payload.read_json(run_dir / "summary.json")
    mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "ivx"))
    with mlflow.start_run(run_name=_name(run_dir)):
        mlflow.log_params(params(run_dir))
        found = metrics(summary)
        if found:
            mlflow.log_metrics(found)
        for figure in _figures(run_dir):
            mlflow.log_artifact(str(figure), artifact_path="plots")
        mlflow.log_artifacts(str(run_dir), artifact_path="run")


TRACKERS: dict[str, Callable[[Path], None]] = {"wandb": log_wandb, "mlflow": log_mlflow}


def log(run_dir: Path, names: list[str], warn: Callable[[str], object]) -> list[str]:
    """Log the run to each named tracker; return the ones that failed (each warned about)."""
    failed = []
    for name in names:
        try:
            TRACKERS[name](run_dir)
        except Exception as exc:  # a tracker must never lose the run: warn, keep going
            failed.append(name)
            warn(
                f"warning: tracker {name} failed ({type(exc).__name__}: {exc}); "
                f"the run is complete in {run_dir}"
            )
    return failed
