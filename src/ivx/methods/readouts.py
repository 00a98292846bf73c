"""Readouts: the logit lens or direct logit attribution of every cell's run (`readout:`).

A readout is a method row: each cell runs one full forward (its edits and the corruption as
exact patching applies them; with no interventions that is the clean, or corrupted, run itself)
with the residual-stream sites captured, and its results row carries the cell's metrics plus the
readout's tables (`lens.py`: `lens_*` per site × position; `dla.py`: `dla_*` per head, MLP and
bias at the last position). `summary` adds their means per grid point to summary.json; the
results layer writes readout.csv and the figures from it.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ivx.config.loader import LoadedConfig
from ivx.core.errors import ConfigError, Problem
from ivx.engine import loop
from ivx.engine.loop import CellOutput
from ivx.methods import dla, lens, norms, unembed
from ivx.model import hooks

if TYPE_CHECKING:
    from ivx.engine.executor import Executor
    from ivx.plan.grid import Cell

# readout → (its sites, its per-cell row extras)
READERS: dict[str, tuple[Callable[..., Any], Callable[..., dict[int, dict[str, Any]]]]] = {
    "logit_lens": (lens.sites, lens.extras),
    "dla": (dla.sites, dla.extras),
}


def applies(cfg: LoadedConfig) -> bool:
    """True when the experiment sets `readout:`."""
    return cfg.experiment.readout is not None


def check(cfg: LoadedConfig) -> list[Problem]:
    """Config problems of a readout: exact, first-token scoring, no path patching, a target per record."""
    exp = cfg.experiment
    if exp.readout is None:
        return []
    at = ("readout",)
    problems: list[Problem] = []
    if exp.method != "exact":
        problems.append(
            cfg.problem(at, f"readout: {exp.readout} reads each cell's run exactly; use method: exact")
        )
    if exp.answer != "first_token":
        problems.append(cfg.problem(at, "readouts score the first answer token; use answer: first_token"))
    if any(iv.receivers for iv in exp.interventions):
        problems.append(cfg.problem(at, "readouts do not combine with path patching (`receivers`)"))
    for k, record in enumerate(cfg.records):
        if record.target is None:
            problems.append(
                cfg.problem(("prompts", k), f"readout: {exp.readout} needs a `target` in every record")
            )
            break
    return problems


def check_model(cfg: LoadedConfig, lm: Any) -> None:
    """The model's final norm, unembedding and (for DLA) per-head sites: ConfigError before any forward."""
    readout = cfg.experiment.readout
    if readout is None:
        return
    problems = [cfg.problem(("readout",), reason) for reason in model_problems(lm, readout)]
    if problems:
        raise ConfigError(problems)


def model_problems(lm: Any, readout: str) -> list[str]:
    """Why this model cannot give this readout (empty: it can); the model may be validate's
    recorded structure (its final norm then known from `norms.FAMILIES` by model type)."""
    info = lm.info
    try:
        path, norm = unembed.find_norm(lm.model)
        if hasattr(norm, "forward"):  # a module (meta or loaded): run a copy of it
            norms.classify(norm, info.d_model, path)
        elif info.model_type not in norms.FAMILIES and callable(getattr(lm.model, "real", None)):
            unembed.of(lm.model.real())  # a recorded structure of a family without a row: build it
    except unembed.ReadoutError as exc:
        return [str(exc)]
    if readout != "dla":
        return []
    missing = [c for c in dla.COMPONENTS if c not in info.components]
    if missing:
        names = ", ".join(missing)
        return [f"dla reads {names}, which {info.model_type} does not expose (layout {info.layout})"]
    return dla.refusal(unembed.softcap(lm.model, info.model_type))


def execute(executor: Executor, cells: list[Cell]) -> Iterator[list[CellOutput]]:
    """Read out cells prompt by prompt (after `executor.prepare()`): one captured forward per chunk.

    Chunks are cut from each prompt's cells in the plan, then keep the cells asked for, so a resumed
    run or a backend task computes every cell in the forward a whole run gives it.
    """
    import torch

    read_sites, read = READERS[str(executor.exp.readout)]
    model, S = executor.lm.model, executor.samples
    u = unembed.of(model)
    sites = read_sites(executor)
    wanted = {cell.index for cell in cells}
    planned: dict[int, list[Cell]] = defaultdict(list)
    for cell in executor.plan.cells:
        planned[cell.prompt].append(cell)
    for prompt in dict.fromkeys(cell.prompt for cell in cells):
        ids = torch.tensor([executor.base.run_ids(executor.work, prompt)], device=executor.lm.device)
        step = max(1, executor.batch_rows(ids.shape[1]) // S)
        mine = planned[prompt]
        for start in range(0, len(mine), step):
            chunk = [cell for cell in mine[start : start + step] if cell.index in wanted]
            if not chunk:
                continue
            patched = executor.engine.patches.build(chunk)
            with hooks.patching(model, patched.patches), hooks.capturing(model, sites) as store:
                logits = model(input_ids=ids.expand(len(chunk) * S, -1)).logits  # [rows, seq, vocab]
            extras = read(executor, u, store, chunk, logits[:, -1].float())
            keep = logits if executor.exp.output.logits == "all" else logits[:, -1]  # as exact patching keeps
            outs = loop.outputs(executor.engine, chunk, keep.float().cpu(), patched)
            for out in outs:
                out.row.update(extras[out.cell.index])
            yield outs


def _stats(values: list[Any]) -> tuple[Any, Any]:
    """Elementwise (mean, standard error) of equally shaped nested lists (or numbers)."""
    if isinstance(values[0], list):
        pairs = [_stats(list(column)) for column in zip(*values, strict=True)]
        return [m for m, _ in pairs], [s for _, s in pairs]
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return mean, se


def _lens_point(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A grid point's lens: per site, the mean ± se at the last position and aligned from the end."""
    shortest = min(len(r["lens_target_prob"][0]) for r in rows)
    out: dict[str, Any] = {}
    for name in ("target_prob", "target_rank", "foil_prob"):
        key = f"lens_{name}"
        if not all(key in r for r in rows):
            continue
        mean, se = _stats([[per_site[-1] for per_site in r[key]] for r in rows])
        out[name] = {"last": mean, "last_se": se}
        out[name]["from_end"] = _stats([[per_site[-shortest:] for per_site in r[key]] for r in rows])[0]
    return out


def _dla_point(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A grid point's DLA: mean ± se of every part, and the largest contributions by magnitude."""
    out: dict[str, Any] = {"direction": sorted({r["dla_direction"] for r in rows})}
    for name in ("heads", "mlp", "attn_bias", "embed", "bias", "total", "logit"):
        out[name], out[f"{name}_se"] = _stats([r[f"dla_{name}"] for r in rows])
    parts = [(f"L{layer}H{h}", v) for layer, per in enumerate(out["heads"]) for h, v in enumerate(per)]
    parts += [(f"MLP{layer}", v) for layer, v in enumerate(out["mlp"])]
    parts += [("embed", out["embed"]), ("attn_bias", sum(out["attn_bias"])), ("bias", out["bias"])]
    out["top"] = [{"component": c, "mean": v} for c, v in sorted(parts, key=lambda cv: -abs(cv[1]))[:8]]
    gap = max(abs(r["dla_total"] - r["dla_logit"]) / (1.0 + abs(r["dla_logit"])) for r in rows)
    if gap > 1e-4:  # a family without a `norms.FAMILIES` row whose blocks are not a plain residual sum
        out["warning"] = (
            f"the parts do not sum to the logit difference (relative gap up to {gap:.2g}): this model's "
            "blocks do not add each head's and MLP's output to the residual stream as it is"
        )
    return out


def summary(
    executors: list[Executor], labels: list[str | None], rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """summary.json's `readout`: what was read and how, and its means per grid point (and corruption)."""
    executor = executors[0]
    readout = str(executor.exp.readout)
    axes = list(executor.plan.axes) + (["corruption"] if labels[0] is not None else [])
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[tuple(row.get(a) for a in axes)].append(row)
    point = _lens_point if readout == "logit_lens" else _dla_point
    u = unembed.of(executor.lm.model)
    section: dict[str, Any] = {"kind": readout, "norm": u.describe(), "axes": axes}
    if readout == "logit_lens":
        section["sites"] = lens.site_names(executor.lm.info.n_layers)
    section["points"] = [
        {"point": dict(zip(axes, key, strict=True)), "n": len(mine), **point(mine)}
        for key, mine in groups.items()
    ]
    return {"readout": section}
