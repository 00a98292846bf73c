"""What attribution over SAE features adds to summary.json: the error nodes and the top features.

Per SAE site (`sae_attribution.sites[]`): the reconstruction error node's estimated effect at every
position of every prompt (the node the feature rows leave out: features + error = the
activation-level estimate), the features with the largest mean estimated effect over prompts
(from the rows of single-feature, single-position cells), and per position the summed feature
effects beside the error node's. Effects are in each metric's units: the row's value minus the
value the same row would have with no change.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

from ivx.core import metrics
from ivx.methods import attribution

if TYPE_CHECKING:
    from ivx.engine.executor import Executor
    from ivx.plan.edits import Edit
    from ivx.plan.grid import Cell

TOP = 20  # features listed per site
Site = tuple[str, str, int, str]  # (SAE reference, component, layer, source run)


def _key(edit: Edit) -> Site:
    assert edit.sae is not None
    return (edit.sae, edit.component, edit.layer, edit.source)


def _vanilla(cell: Cell) -> list[Edit]:
    """The cell's SAE edits that patch features from a run (the ones with an error node)."""
    return [e for e in cell.edits if e.sae is not None and e.kind == "vanilla" and e.sae_error == "keep"]


def _no_change(executor: Executor, prompt: int, names: list[str]) -> dict[str, float]:
    """The metric values of a row whose estimated change is zero (the run's own values)."""
    corrupted, clean = executor.reference_values(prompt)
    return metrics.cell_values(names, corrupted, corrupted, clean)


def _error_nodes(executor: Executor, names: list[str]) -> dict[Site, list[dict[str, Any]]]:
    """Per site, the error node's estimated effect at each position of each prompt."""
    by_prompt: dict[int, list[Cell]] = defaultdict(list)
    for cell in executor.plan.cells:
        if _vanilla(cell):
            by_prompt[cell.prompt].append(cell)
    out: dict[Site, list[dict[str, Any]]] = defaultdict(list)
    for prompt, cells in by_prompt.items():
        est = attribution.Estimates(executor, prompt, cells)
        zero = _no_change(executor, prompt, names)
        sites = {_key(e): e for c in cells for e in _vanilla(c)}
        for key, edit in sites.items():
            errors = {q: est.features.table(edit, q, None)[1].mean(0) for q in est.quantities}  # [seq]
            for t in range(len(next(iter(errors.values())))):
                patched = {q: est.grads.values[q] + float(errors[q][t]) for q in est.quantities}
                row = executor.engine.rows.row(cells[0], patched, run=est.grads.values)
                effect = {m: _minus(row.get(m), zero.get(m)) for m in names}
                out[key].append({"prompt_index": prompt, "position": t, **effect})
    return out


def _minus(a: Any, b: Any) -> float | None:
    return float(a) - float(b) if isinstance(a, int | float) and isinstance(b, int | float) else None


def _features(executor: Executor, rows: list[dict[str, Any]], names: list[str]) -> dict[Site, dict]:
    """Per site, (feature, position) → per-metric lists of effects over prompts."""
    cells = {c.index: c for c in executor.plan.cells}
    zero: dict[int, dict[str, float]] = {}
    out: dict[Site, dict] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for row in rows:
        cell = cells.get(row.get("cell", -1))
        saes = [e for e in cell.edits if e.sae is not None] if cell is not None else []
        if cell is None or len(saes) != 1 or len(cell.edits) != 1:
            continue
        edit = saes[0]
        if edit.features is None or len(edit.features) != 1 or len(edit.positions) != 1:
            continue
        if cell.prompt not in zero:
            zero[cell.prompt] = _no_change(executor, cell.prompt, names)
        node = out[_key(edit)][(edit.features[0], edit.positions[0])]
        for m in names:
            effect = _minus(row.get(m), zero[cell.prompt].get(m))
            if effect is not None:
                node[m].append(effect)
    return out


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def site_report(executor: Executor, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The `sites` list of one executor's run (empty without SAE edits)."""
    names = [m for m in executor.exp.metrics if m != "top_k"]
    errors = _error_nodes(executor, names)
    features = _features(executor, rows, names)
    first = names[0]
    out = []
    for key in sorted(set(errors) | set(features), key=str):
        ref, component, layer, source = key
        nodes = features.get(key, {})
        mean = {fp: {m: _mean(v) for m, v in per.items()} for fp, per in nodes.items()}
        ranked = sorted(mean, key=lambda fp: -abs(mean[fp].get(first) or 0.0))[:TOP]
        top = [
            {"feature": f, "position": t, **mean[(f, t)], "prompts": len(nodes[(f, t)][first])}
            for f, t in ranked
        ]
        by_pos: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for (_, t), per in nodes.items():
            by_pos[t]["features"].append(sum(per.get(first, [])) / max(1, len(per.get(first, []))))
        for e in errors.get(key, []):
            if e.get(first) is not None:
                by_pos[e["position"]]["error"].append(e[first])
        positions = [
            {"position": t, "features": sum(v["features"]), "error": _mean(v["error"])}
            for t, v in sorted(by_pos.items())
        ]
        out.append(
            {
                "sae": ref,
                "component": component,
                "layer": layer,
                "source": source,
                "metric": first,
                "top_features": top,
                "by_position": positions,
                "error_nodes": errors.get(key, []),
            }
        )
    return out


def summary(
    executors: list[Executor], labels: list[str | None], rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """summary.json's `sae_attribution` (per corruption label for a list of corruptions)."""
    if not any(e.sae is not None for c in executors[0].plan.cells for e in c.edits):
        return {}
    if labels == [None]:
        return {"sae_attribution": {"sites": site_report(executors[0], rows)}}
    return {
        "sae_attribution": {
            str(label): {"sites": site_report(e, [r for r in rows if r.get("corruption") == label])}
            for e, label in zip(executors, labels, strict=True)
        }
    }
