"""What a run writes besides its results rows: tensor parts and their merge, summary.json, figures."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ivx.config.schema import Corrupt
from ivx.methods import registry
from ivx.results import controls, gridplot, plots, readouts, rundir, sae_plots, tracing
from ivx.results import sae as sae_report
from ivx.results.summary import contrast_warnings, scoring_warnings, summarize

if TYPE_CHECKING:
    import torch

    from ivx.plan.prepared import Prepared


def axes_and_metrics(prep: Prepared) -> tuple[tuple[str, ...], list[str]]:
    """The results' grid axes (plus `corruption` for a list of corruptions) and scalar metric names."""
    axes = tuple(prep.plan.axes) + (("corruption",) if prep.label is not None else ())
    return axes, [m for m in prep.cfg.experiment.metrics if m != "top_k"]


def store(
    outputs: list[Any], label: str | None, logits: str, parts: Path, n_batch: int, results: rundir.Results
) -> None:
    """Append one batch: its tensors as an atomic part file, then its rows (all or nothing)."""
    tensors: dict[str, torch.Tensor] = {}
    for out in outputs:
        if label is not None:
            out.row["corruption"] = label
        if logits != "none" and out.logits is not None:
            tensors[f"cell{out.cell.index}"] = out.logits.contiguous()
        tensors.update({k: v.contiguous() for k, v in out.collected.items()})
    if tensors:
        parts.mkdir(exist_ok=True)
        stamp = f"{int(time.time() * 1000)}-{n_batch:06d}"
        rundir.save_tensors(tensors, parts / f"part-{stamp}.safetensors")
    results.append([o.row for o in outputs])


def write(
    run_dir: Path,
    preps: list[Prepared],
    executors: list[Any],
    rows: list[dict[str, Any]],
    results: rundir.Results,
    axes: tuple[str, ...],
    metric_names: list[str],
    controls_ran: dict[str, tuple[list[dict[str, Any]], list[Any]]] | None = None,
) -> None:
    """Everything after the cells: summary.json, results.csv, the merged tensors, the figures
    (and the controls the recipe ran: name → their rows and executors)."""

    exp = preps[0].cfg.experiment
    labelled = preps[0].label is not None
    parts = run_dir / "tensors.parts"
    summary, traces = _summary(preps, executors, rows, axes, metric_names)
    if controls_ran:
        summary["controls"], extra = controls.section(run_dir, preps, rows, axes, metric_names, controls_ran)
        summary["warnings"] = summary.get("warnings", []) + extra
    rundir.write_json(run_dir / "summary.json", summary)
    results.write_csv(rows)
    readouts.write(run_dir, summary, rows, exp.output.plots)  # readout.csv and its figure, if any
    merge_tensors(run_dir, parts, [e.base for e in executors], [p.label for p in preps], exp.output.logits)
    if exp.output.plots:
        for variant in preps:
            mine = [r for r in rows if r.get("corruption") == variant.label] if labelled else rows
            trace = traces.get(variant.label)
            suffix = f"_{variant.label}" if labelled else ""
            plots.write_all(run_dir, variant, mine, {"trace": trace} if trace else {}, suffix)
        what = gridplot.describe([iv.model_dump() for iv in exp.interventions], exp.corrupt is not None)
        gridplot.write(run_dir, summary, what)
        sae_plots.write(run_dir, summary)  # attribution over SAE features, if any


def _summary(
    preps: list[Prepared],
    executors: list[Any],
    rows: list[dict[str, Any]],
    axes: tuple[str, ...],
    metric_names: list[str],
) -> tuple[dict[str, Any], dict[str | None, dict[str, Any]]]:
    """summary.json's content (grid statistics, prompts, warnings, traces, the method's own part)."""

    prep = preps[0]
    exp = prep.cfg.experiment
    labelled = prep.label is not None
    summary: dict[str, Any] = {
        "name": exp.name,
        "metrics": metric_names,
        "axes": list(axes),
        "grid": summarize(rows, axes, metric_names),
        "prompts": _prompt_table(executors[0]),
    }
    if prep.dropped:
        summary["dropped"] = prep.dropped
    warnings = scoring_warnings(prep.prompts, exp.answer)
    warnings += contrast_warnings(summary["prompts"], metric_names)
    if warnings:
        summary["warnings"] = warnings
    traces = {}
    for variant, executor in zip(preps, executors, strict=True):
        mine = [r for r in rows if r.get("corruption") == variant.label] if labelled else rows
        corrupt = variant.cfg.experiment.corrupt  # one corruption per variant: never a list here
        if executor.base.sigma is not None and isinstance(corrupt, Corrupt):
            key = f"noise_std_{variant.label}" if labelled else "noise_std"
            summary[key] = corrupt.scale * executor.base.sigma
        if tracing.applies(variant):
            traces[variant.label] = tracing.aggregate(variant, mine, executor)
    if traces:
        summary["trace"] = next(iter(traces.values()))
        if labelled:
            summary["traces"] = traces
    summary.update(registry.summary(executors, [p.label for p in preps], rows))  # the method's own part
    saes, sae_warnings = sae_report.section(prep, executors[0])
    if saes:
        summary["saes"] = saes
        summary["warnings"] = summary.get("warnings", []) + sae_warnings
    return summary, traces


def _prompt_table(executor: Any) -> list[dict[str, Any]]:
    out = []
    for p in executor.prompts.values():
        corrupted, clean = executor.reference_values(p.index)
        out.append(
            {
                "prompt_index": p.index,
                "base": p.record.base,
                "tokens": list(p.base_tokens),
                "subject_span": list(p.subject_span) if p.subject_span else None,
                "bos": p.bos,
                "target_ids": list(p.target_ids) if p.target_ids else None,
                "target_tokens": list(p.target_tokens) if p.target_tokens else None,
                "foil_ids": list(p.foil_ids) if p.foil_ids else None,
                "foil_tokens": list(p.foil_tokens) if p.foil_tokens else None,
                "clean": clean,
                "corrupted": corrupted,
            }
        )
    return out


def merge_tensors(
    run_dir: Path, parts: Path, bases: list[Any], labels: list[str | None], logits: str
) -> None:
    """Baseline logits and every part file into tensors.safetensors, keeping what an earlier merge wrote."""
    import shutil

    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    if logits != "none":
        for base, label in zip(bases, labels, strict=True):
            tag = f"{label}." if label else ""
            for p, v in base.clean_logits.items():
                tensors[f"clean.prompt{p}"] = v.contiguous()
            for p, v in base.corrupt_logits.items():
                tensors[f"{tag}corrupted.prompt{p}"] = v.contiguous()
            for p, v in base.source_logits.items():
                tensors[f"source.prompt{p}"] = v.contiguous()
    merged = run_dir / "tensors.safetensors"
    if merged.exists():  # a resume after an interrupted merge: keep every cell merged before
        tensors = {**load_file(str(merged)), **tensors}
    if parts.exists():
        for part in sorted(parts.glob("part-*.safetensors")):
            tensors.update(load_file(str(part)))
    if tensors:
        rundir.save_tensors(tensors, merged)
    if parts.exists():
        shutil.rmtree(parts)
