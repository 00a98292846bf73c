"""Built-in controls: the same experiment where there should be nothing to find.

Interventions find "effects" that are artefacts: DAS fits arbitrary label mappings and finds
subspaces in randomly initialised models (Arora et al. 2024, "CausalGym"; Wu et al. 2023).
`controls:` reruns the experiment beside the real one:

- `random_init`: the same sweep on a copy of the model re-initialised with the architecture's own
  initialiser, seeded by the experiment seed (no training, so no knowledge to localise);
- `placebo`: every activation copied in (vanilla patches, path-patching senders) and every
  fixed vector replaced by a random vector of the same norm at each position;
- `shuffled_labels` (`ivx train`): DAS trained and scored on counterfactual labels permuted
  across records (see `train`).

Each control's grid (and trace) goes into `summary.json → controls`, its rows into
`controls/<name>/results.jsonl`, its figures into `controls/<name>/plots/`; a warning fires
when a control's effects vary over the grid by at least `MARGIN` of the real spread
(raw metrics only: normalised ones divide by a gap that a control model may not have).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ivx import rundir

if TYPE_CHECKING:
    import torch

    from ivx.experiment import Prepared
    from ivx.runner import CellOutput, Executor

RUN_CONTROLS: tuple[str, ...] = ("random_init", "placebo")
MARGIN = 0.5  # a control whose effects spread this fraction of the real spread is reported


def reinitialised(lm: Any, seed: int) -> Any:
    """A copy of a loaded model with every weight re-drawn by the architecture's initialiser."""
    import torch

    model = copy.deepcopy(lm.model)
    torch.manual_seed(seed)
    with torch.no_grad():
        model.apply(model._init_weights)
    model.eval()
    return dataclasses.replace(lm, model=model)


def _like(value: torch.Tensor, seed: int) -> torch.Tensor:
    """A Gaussian tensor with `value`'s shape and the same norm along its last dimension."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(value.shape, generator=gen, dtype=torch.float32).to(value.device)
    scale = value.float().norm(dim=-1, keepdim=True) / noise.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return (noise * scale).to(value.dtype)


def placebo(executor: Executor, seed: int) -> None:
    """Swap every captured source activation and loaded vector for a norm-matched random one."""
    base = executor.base
    n = 0
    for store in (base.clean_acts, base.source_acts, base.corrupt_acts):
        for by_prompt in store.values():
            for prompt in list(by_prompt):
                by_prompt[prompt] = _like(by_prompt[prompt], seed * 7919 + n)
                n += 1
    from ivx.vectors import load_vector

    refs = {e.vector: e.name for c in executor.plan.cells for e in c.edits if e.vector is not None}
    for ref, name in sorted(refs.items()):
        vector = load_vector(ref, name, executor.cfg.path.parent)
        executor.vectors[ref] = _like(vector, seed * 7919 + n)  # read by the executor before any file
        n += 1


def _execute(executor: Executor, cells: list[Any]) -> Iterator[list[CellOutput]]:
    """The batches of the run's own method on the local backend."""
    from ivx import attribution, pathpatch

    if executor.exp.method == "attribution":
        return attribution.execute(executor, cells)
    if pathpatch.applies(executor.cfg):
        return pathpatch.execute(executor, cells)
    return executor.execute(cells)


def _rows(preps: list[Prepared], name: str) -> tuple[list[dict[str, Any]], list[Any]]:
    """Every cell of the run again under one control: results rows and the executors."""
    from ivx import answers

    seed = preps[0].cfg.experiment.seed
    lm = reinitialised(preps[0].lm, seed) if name == "random_init" else preps[0].lm
    rows: list[dict[str, Any]] = []
    executors = []
    for prep in preps:
        executor = answers.executor(prep.cfg, lm, prep.prompts, prep.plan)
        executor.prepare()
        if name == "placebo":
            placebo(executor, seed)
        executors.append(executor)
        for outputs in _execute(executor, list(prep.plan.cells)):
            for out in outputs:
                if prep.label is not None:
                    out.row["corruption"] = prep.label
                rows.append(out.row)
    return rows, executors


# raw effects, compared across models; normalised metrics divide by the model's own clean −
# corrupted gap, which a model without the behaviour makes ~0 (and the ratio noise)
EFFECTS: tuple[str, ...] = ("indirect_effect", "logit_diff", "target_logit", "target_prob", "kl")


def effect_metric(metrics: list[str]) -> str | None:
    """The raw metric controls are compared on (never a normalised one)."""
    return next((m for m in EFFECTS if m in metrics), None)


def spread(grid: list[dict[str, Any]], metric: str) -> float | None:
    """How much the site matters: max − min of a metric's grid means (None when not computed)."""
    values = [e[metric] for e in grid if isinstance(e.get(metric), int | float)]
    return max(values) - min(values) if values else None


def section(
    run_dir: Path,
    preps: list[Prepared],
    rows: list[dict[str, Any]],
    axes: tuple[str, ...],
    metrics: list[str],
) -> tuple[dict[str, Any], list[str]]:
    """Run every control of the config: (summary.json's `controls`, warnings)."""
    from ivx import gridplot, plots, tracing
    from ivx.summary import summarize

    names = [c for c in preps[0].cfg.experiment.controls if c in RUN_CONTROLS]
    metric = effect_metric(metrics)
    real = spread(summarize(rows, axes, metrics), metric) if metric else None
    out: dict[str, Any] = {}
    warnings: list[str] = []
    for name in names:
        ctrl_rows, executors = _rows(preps, name)
        here = run_dir / "controls" / name
        here.mkdir(parents=True, exist_ok=True)
        rundir.write_text(here / "results.jsonl", "".join(json.dumps(r) + "\n" for r in ctrl_rows))
        entry: dict[str, Any] = {"grid": summarize(ctrl_rows, axes, metrics), "metric": metric}
        entry["spread"] = spread(entry["grid"], metric) if metric else None
        entry["real_spread"] = real
        prep = preps[0]
        if tracing.applies(prep):
            mine = [r for r in ctrl_rows if r.get("corruption") == prep.label]
            entry["trace"] = tracing.aggregate(prep, mine, executors[0])
        out[name] = entry
        if prep.cfg.experiment.output.plots:
            named = dataclasses.replace(prep, cfg=_renamed(prep.cfg, f"{name} control"))
            plots.write_all(here, named, ctrl_rows, {"trace": entry.get("trace")} if "trace" in entry else {})
            gridplot.write(
                here, {"metrics": metrics, "axes": list(axes), **entry, "name": named.cfg.experiment.name}
            )
        if entry["spread"] is not None and real is not None and entry["spread"] >= MARGIN * real:
            warnings.append(
                f"control {name}: {metric} varies over the grid by {entry['spread']:.3f}, at least "
                f"{MARGIN:.0%} of the real run's {real:.3f}; the effect may be an artefact of the method "
                "(summary.json: controls)"
            )
    if out and metric and preps[0].cfg.experiment.output.plots:
        series = {"real": [real], **{n: [e["spread"]] for n, e in out.items()}}
        title = f"{preps[0].cfg.experiment.name}: spread of mean {metric}\nover the grid, real vs controls"
        bars(run_dir / "plots" / f"controls_{metric}.png", title, [metric], series, "max − min over the grid")
    return out, warnings


def _renamed(cfg: Any, suffix: str) -> Any:
    exp = cfg.experiment
    return dataclasses.replace(cfg, experiment=exp.model_copy(update={"name": f"{exp.name} ({suffix})"}))


def text(summary: dict[str, Any]) -> list[str]:
    """Terminal lines: each control's spread of effects beside the real one's."""
    lines = []
    for name, entry in (summary.get("controls") or {}).items():
        if entry.get("spread") is None:
            continue
        lines.append(
            f"control {name}: {entry['metric']} varies over the grid by {entry['spread']:.3f} "
            f"(real run: {entry['real_spread']:.3f})"
        )
    return lines


DAS_CONTROLS: tuple[str, ...] = ("shuffled_labels", "random_init", "placebo")
_RANDOM_MODELS: dict[tuple[int, int], Any] = {}  # (id of the model, seed) → its re-initialised copy


def das_point(
    lm: Any,
    cfg: Any,
    iv: Any,
    site: Any,
    examples: Callable[[Any], tuple[list[Any], list[Any]]],
    settings: Any,
    seed: int,
) -> dict[str, float]:
    """Held-out IIA of one DAS grid point under each control of the config (`<name>_iia`).

    `examples(model)` gives the point's (train, held-out) examples on a model. shuffled_labels
    trains and scores on counterfactual targets permuted across records; random_init trains on
    the re-initialised model; placebo is the untrained random basis that `ivx train` always
    reports as `control_iia`.
    """
    import random

    from ivx import train

    names = cfg.experiment.controls
    out: dict[str, float] = {}
    if "shuffled_labels" in names:
        train_ex, held_ex = examples(lm)
        every = train_ex + held_ex
        targets = [ex.target for ex in every]
        random.Random(seed).shuffle(targets)
        shuffled = [dataclasses.replace(ex, target=t) for ex, t in zip(every, targets, strict=True)]
        picked = shuffled[: len(train_ex)], shuffled[len(train_ex) :]
        out["shuffled_labels_iia"] = train.train_point(lm, site, iv, settings, *picked, seed, _quiet)["iia"]
    if "random_init" in names:
        key = (id(lm.model), cfg.experiment.seed)
        if key not in _RANDOM_MODELS:
            _RANDOM_MODELS.clear()
            _RANDOM_MODELS[key] = reinitialised(lm, cfg.experiment.seed)
        rand = _RANDOM_MODELS[key]
        out["random_init_iia"] = train.train_point(rand, site, iv, settings, *examples(rand), seed, _quiet)[
            "iia"
        ]
    return out


def _quiet(message: str) -> None:
    """Controls train silently: the log is about the real intervention."""


def das_warnings(points: list[dict[str, Any]]) -> list[str]:
    """A warning per grid point where a control's IIA comes within MARGIN of the real IIA."""
    out = []
    for p in points:
        for name in ("control", *DAS_CONTROLS[:2]):
            value = p.get(f"{name}_iia")
            if isinstance(value, float) and p["iia"] > 0 and value >= MARGIN * p["iia"]:
                out.append(
                    f"point {p['point']}: {name} IIA {value:.3f} is within {MARGIN:.0%} of the real IIA "
                    f"{p['iia']:.3f}; the subspace may fit anything at this site"
                )
    return out


def bars(
    path: Path, title: str, groups: list[str], series: dict[str, list[float | None]], ylabel: str
) -> Path:
    """A grouped bar chart: the real result beside each control, per group (grid point)."""
    from ivx import gridplot

    plt = gridplot._pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(groups) * len(series) / 2 + 2), 3.2))
    width = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
        xs = [i + k * width for i in range(len(groups))]
        ax.bar(xs, [float("nan") if v is None else v for v in values], width, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))], groups, fontsize=7, rotation=30)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.axhline(0, color="black", lw=0.5)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def das_outputs(run_dir: Path, summary: dict[str, Any]) -> list[str]:
    """plots/iia_controls.png and the terminal lines: held-out IIA beside each control's."""
    from ivx import report

    points = summary.get("points") or []
    names = ["control", *(n for n in DAS_CONTROLS[:2] if any(f"{n}_iia" in p for p in points))]
    labels = {
        "control": "placebo (random basis)",
        "shuffled_labels": "shuffled labels",
        "random_init": "random init",
    }
    groups = [", ".join(f"{a}={report.label(p.get(a))}" for a in summary.get("axes", [])) for p in points]
    series = {"real": [p["iia"] for p in points]}
    series.update({labels[n]: [p.get(f"{n}_iia") for p in points] for n in names})
    bars(run_dir / "plots" / "iia_controls.png", "held-out IIA: real vs controls", groups, series, "IIA")
    lines = ["held-out IIA vs controls: " + " | ".join(["real", *(labels[n] for n in names)])]
    for group, *values in zip(groups, *series.values(), strict=True):
        lines.append(f"  {group or 'site'}: " + " | ".join("-" if v is None else f"{v:.3f}" for v in values))
    return lines
