"""Causal-tracing analysis (Meng et al. 2022, "Locating and Editing Factual Associations in GPT").

The runner computes, for each fact, component, layer and token, the indirect effect
IE = p(restored) − p(corrupted) of the expected answer, averaged over noise samples. This
module aggregates those cells the way the paper's figures do: by token category (first /
middle / last subject token, first subsequent token, further tokens, last token) × layer per
component, as the mean over facts (AIE) with its standard error, plus the absolute-position ×
layer matrix when all facts share one tokenization length.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from ivx.config import sweep as sweeps
from ivx.config.fields import is_ref
from ivx.plan.positions import CATEGORIES, category, resolve
from ivx.results.summary import stats as _stats
from ivx.results.tables import PRIMARY

if TYPE_CHECKING:
    from ivx.engine.executor import Executor


def bound_axes(prep: Any) -> dict[str, str]:
    """Map intervention field (component/layer/position) → the sweep axis bound to it."""
    out: dict[str, str] = {}
    for iv in prep.cfg.experiment.interventions[:1]:
        for field in ("component", "layer", "position"):
            value = getattr(iv, field)
            if is_ref(value):
                out[field] = value[1:]
    return out


def panel(row: dict[str, Any], prep: Any) -> str:
    """The panel a traced cell belongs to: its component, plus the values of any other sweep axis
    (e.g. `block_output | sever=mlp_output`), so conditions are aggregated apart, never mixed."""
    axes = bound_axes(prep)
    default = str(prep.cfg.experiment.interventions[0].component)
    comp = str(row[axes["component"]]) if "component" in axes else default
    bound = set(axes.values())  # a zip group or points of traced axes only is no panel of its own
    extra = [d.name for d in sweeps.dimensions(prep.cfg.experiment.sweep) if not set(d.axes) <= bound]
    return comp + "".join(f" | {a}={row.get(a) if row.get(a) is not None else 'none'}" for a in extra)


def plot_metric(metrics: list[str]) -> str | None:
    """The metric a heatmap shows: the most informative one that was computed."""
    for name in PRIMARY:
        if name in metrics:
            return name
    return None


def applies(prep: Any) -> bool:
    """True for sweeps over single layers × positions (the shape causal tracing and patching
    share); a sweep whose layer values are lists of layers gets the plain grid summary only."""
    axes = bound_axes(prep)
    if "layer" not in axes or "position" not in axes:
        return False
    layers = sweeps.axis_values(prep.cfg.experiment.sweep).get(axes["layer"]) or []
    single = layers == "all" or all(isinstance(v, int) and not isinstance(v, bool) for v in layers)
    return single and plot_metric(prep.cfg.experiment.metrics) is not None


def site(row: dict[str, Any], prep: Any, prompt: Any) -> tuple[int, tuple[int, ...], str]:
    """A traced row's concrete layer, token positions and token-category label.

    Negative layers and positions count from the end (as the plan resolves them); a value
    covering several tokens (`subject`, `[1, 4]`) is a category of its own, labelled by the value.
    """
    axes = bound_axes(prep)
    spec = row[axes["position"]]
    layer = int(row[axes["layer"]])
    if layer < 0:
        layer += prep.lm.info.n_layers
    positions = resolve(spec, prompt.length, prompt.subject_span)
    if len(positions) == 1:
        return layer, positions, category(positions[0], prompt.length, prompt.subject_span, prompt.bos)
    return layer, positions, spec if isinstance(spec, str) else json.dumps(spec)


def aggregate(prep: Any, rows: list[dict[str, Any]], executor: Executor) -> dict[str, Any]:
    """AIE by token category × layer (and by position × layer) per component, with std errors."""
    metric = plot_metric(prep.cfg.experiment.metrics)
    assert metric is not None
    n_layers = prep.lm.info.n_layers
    prompts = {p.index: p for p in prep.prompts}
    # per component → category → layer → fact → values (several tokens can share a category)
    per_fact: dict[str, dict[str, dict[int, dict[int, list[float]]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    )
    by_pos: dict[str, dict[int, dict[int, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for row in rows:
        value = row.get(metric)
        if not isinstance(value, int | float):
            continue
        comp = panel(row, prep)
        p = prompts[row["prompt_index"]]
        layer, positions, cat = site(row, prep, p)
        per_fact[comp][cat][layer][p.index].append(float(value))
        if len(positions) == 1:
            by_pos[comp][positions[0]][layer].append(float(value))
    lengths = {p.length for p in prep.prompts}
    out: dict[str, Any] = {"metric": metric, "categories": {}, "n_layers": n_layers, "components": {}}
    for comp, cats in per_fact.items():
        table: dict[str, Any] = {}
        for cat in [c for c in CATEGORIES if c in cats] + [c for c in cats if c not in CATEGORIES]:
            means, errs, counts = [], [], []
            for layer in range(n_layers):
                facts = cats[cat].get(layer, {})
                m, e, n = _stats([sum(v) / len(v) for v in facts.values()])
                means.append(m)
                errs.append(e)
                counts.append(n)
            table[cat] = {"mean": means, "stderr": errs, "n": counts}
        entry: dict[str, Any] = {"by_category": table}
        if len(lengths) == 1:
            length = next(iter(lengths))
            stats = [
                [_stats(by_pos[comp][pos].get(layer, [])) for layer in range(n_layers)]
                for pos in range(length)
            ]
            same = len({p.base_ids for p in prep.prompts}) == 1
            entry["by_position"] = {
                "tokens": list(prep.prompts[0].base_tokens) if same else None,
                "labels": position_labels(prep.prompts),
                "mean": [[s[0] for s in row] for row in stats],
                "stderr": [[s[1] for s in row] for row in stats],
            }
        out["components"][comp] = entry
    out["window"] = windows(prep, [c.split(" | ")[0] for c in out["components"]])
    ref = [executor.reference_values(p.index) for p in prep.prompts]
    out["p_clean"] = _stats([c["target_prob"] for _, c in ref])[0]
    out["p_corrupted"] = _stats([k["target_prob"] for k, _ in ref])[0]
    out["facts"] = len(prep.prompts)
    out["has_subject"] = any(p.subject_span for p in prep.prompts)
    if getattr(prep, "dropped", None):
        out["dropped"] = prep.dropped
    return out


def windows(prep: Any, components: list[str]) -> dict[str, int]:
    """The layers each traced component was restored over (as `plan.edits` widens them; 1 = one)."""
    exp = prep.cfg.experiment
    iv = exp.interventions[0]
    default = exp.trace.windows(prep.lm.info.n_layers) if exp.trace is not None else {}
    out: dict[str, int] = {}
    for comp in dict.fromkeys(components):
        if iv.window is not None:
            size = iv.window.get(comp) if isinstance(iv.window, dict) else iv.window
        else:
            size = default.get(comp) if iv.kind == "vanilla" else None
        out[comp] = min(size or 1, prep.lm.info.n_layers)
    return out


def window_text(trace: dict[str, Any]) -> str:
    """The windows a trace used, as one line (`window: mlp_output 1, attention_output 1 layer(s)`)."""
    wide = {c: w for c, w in (trace.get("window") or {}).items()}
    if not wide:
        return ""
    parts = ", ".join(f"{c} {w}" for c, w in wide.items())
    return f"window: {parts} layer(s) of {trace['n_layers']} restored per cell"


def position_labels(prompts: list[Any]) -> list[str]:
    """A label per position of equal-length prompts: the token where all prompts share it, else
    the first prompt's token in parentheses (e.g. a name that varies across IOI prompts)."""
    labels = []
    for pos, token in enumerate(prompts[0].base_tokens):
        shared = all(p.base_ids[pos] == prompts[0].base_ids[pos] for p in prompts)
        text = "BOS" if pos == 0 and prompts[0].bos else (token.strip() or repr(token))
        labels.append(text if shared else f"({text})")
    return labels


def table_text(trace: dict[str, Any]) -> str:
    """A plain-text AIE table by token category × layer for each component."""
    lines = []
    n_layers = trace["n_layers"]
    for comp, entry in trace["components"].items():
        by_position = entry.get("by_position")
        if not trace.get("has_subject", True) and by_position:
            # no subject, so no token categories: positions of the aligned prompts
            axis = "position"
            labels = by_position.get("labels") or []
            rows = [
                (f"{pos} {labels[pos][:14]}" if pos < len(labels) else str(pos), means)
                for pos, means in enumerate(by_position["mean"])
            ]
        else:
            axis = "token category"
            rows = [(cat, stats["mean"]) for cat, stats in entry["by_category"].items()]
        lines.append(f"{trace['metric']} by {axis} × layer — {comp} (mean over {trace['facts']} prompts)")
        lines.append(f"{'':>20}" + "".join(f"{'L' + str(i):>9}" for i in range(n_layers)))
        for label, means in rows:
            cells = "".join(f"{v:>9.3f}" if v is not None and v == v else f"{'-':>9}" for v in means)
            lines.append(f"{label:>20}{cells}")
        lines.append("")
    lines.append(f"p(clean) = {trace['p_clean']:.3f}   p(corrupted) = {trace['p_corrupted']:.3f}")
    if window_text(trace):
        lines.append(window_text(trace))
    return "\n".join(lines)
