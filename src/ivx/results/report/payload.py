"""What a report shows, read from the run directory alone (so `ivx report RUN` rebuilds it exactly):
the manifest, resolved config, summary, warnings, prompts and the per-prompt rows, as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ivx.results import gridplot
from ivx.results.report import figures

# rows embedded for the drill-down; beyond this only the first prompts' rows are kept (and said so)
MAX_ROWS = 20_000
# row keys that are neither an axis nor a metric column of the drill-down table
_META = ("cell", "prompt_index")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file as a dict ({} when absent or unreadable)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_rows(path: Path) -> list[dict[str, Any]]:
    """A JSON-lines file's rows (a torn last line from a killed run is skipped)."""
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    try:
        return list(json.loads("[" + ",".join(lines) + "]"))  # one parse: fast
    except ValueError:
        rows = []
        for line in lines:
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
        return rows


def collect(run_dir: Path) -> dict[str, Any]:
    """Everything report.html embeds, from the files of one run directory."""
    manifest = read_json(run_dir / "manifest.json")
    summary = read_json(run_dir / "summary.json")
    config = run_dir / "resolved.yaml"
    if not config.is_file():
        config = run_dir / "config.yaml"
    source = run_dir / "config.yaml"  # small: where the position axis is read from
    kind = manifest.get("kind", "train" if "points" in summary else "run")
    axes = list(summary.get("axes", []))
    if summary.get("grid") and "corruption" in summary["grid"][0] and "corruption" not in axes:
        axes.append("corruption")
    found = read_rows(run_dir / "results.jsonl") if "points" not in summary else []  # train: points
    rows, note = _rows(found, axes, summary.get("metrics", []))
    prompts = summary.get("prompts") or []
    text = config.read_text() if config.is_file() else ""
    return {
        "run": run_dir.name,
        "name": summary.get("name") or manifest.get("name", run_dir.name),
        "kind": kind,
        "status": manifest.get("status", "?"),
        "manifest": manifest,
        "config": text,
        "warnings": list(summary.get("warnings") or []),
        "dropped": summary.get("dropped") or [],
        "axes": axes,
        "metrics": summary.get("metrics", []),
        "grid": summary.get("grid") or [],
        "prompts": prompts,
        "rows": rows,
        "rows_note": note,
        "positions": _positions(run_dir / "plan.jsonl", rows["columns"].pop("cell")),
        "figures": figures.all_figures(
            summary, prompts, *intent(source.read_text() if source.is_file() else "")
        ),
        "verification": _verification(summary),
        "controls": _controls(summary),
        "points": summary.get("points") or [],
    }


def intent(config_text: str) -> tuple[str | None, str]:
    """(the sweep axis bound to the first intervention's position — `position: $pos` → `pos` —,
    what was patched into what) from the run's config.yaml."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        config = yaml.load(config_text, Loader=loader) or {}
    except yaml.YAMLError:
        return None, ""
    interventions = config.get("interventions") if isinstance(config, dict) else None
    if not isinstance(interventions, list) or not all(isinstance(iv, dict) for iv in interventions):
        return None, ""
    spec = interventions[0].get("position") if interventions else None
    axis = spec[1:] if isinstance(spec, str) and spec.startswith("$") else None
    return axis, gridplot.describe(interventions, config.get("corrupt") is not None)


def _rows(rows: list[dict[str, Any]], axes: list[str], metrics: list[str]) -> tuple[dict[str, Any], str]:
    """The rows as columns: axis values as codes into their distinct values, metrics as numbers."""
    note = ""
    if len(rows) > MAX_ROWS:
        per_prompt = max(1, len(rows) // max(1, len({r.get("prompt_index") for r in rows})))
        keep = max(1, MAX_ROWS // per_prompt)
        rows = [r for r in rows if isinstance(r.get("prompt_index"), int) and r["prompt_index"] < keep]
        note = f"per-prompt values of the first {keep} prompts are embedded (results.jsonl has them all)"
    names = [m for m in metrics if any(m in r for r in rows[:50])]  # p_clean, p_corrupted: per prompt
    columns: dict[str, Any] = {k: [r.get(k) for r in rows] for k in _META}
    values: dict[str, list[Any]] = {}
    for axis in axes:
        distinct: dict[Any, int] = {}
        codes = [distinct.setdefault(_hashable(r.get(axis)), len(distinct)) for r in rows]
        values[axis] = [json.loads(v) if isinstance(v, _Listed) else v for v in distinct]
        columns[axis] = codes
    for name in names:
        columns[name] = [_number(r.get(name)) for r in rows]
    return {"n": len(rows), "columns": columns, "values": values, "metrics": names}, note


class _Listed(str):
    """A list axis value, as JSON text (hashable)."""


def _hashable(value: Any) -> Any:
    return _Listed(json.dumps(value)) if isinstance(value, list | dict) else value


def _number(value: Any) -> float | None:
    """A metric value for JSON (NaN and missing as null)."""
    return float(value) if isinstance(value, int | float) and value == value else None


def _positions(plan: Path, cells: list[Any]) -> dict[str, Any]:
    """The token positions each embedded row's cell edits, as codes into distinct position lists."""
    wanted = set(cells)
    by_cell: dict[int, tuple[int, ...]] = {}
    for cell in read_rows(plan):
        if cell.get("cell") in wanted:
            spots = {p for e in cell.get("edits", []) for p in (e.get("positions") or ())}
            by_cell[cell["cell"]] = tuple(sorted(spots))
    distinct: dict[tuple[int, ...], int] = {}
    codes = [distinct.setdefault(by_cell[c], len(distinct)) if c in by_cell else None for c in cells]
    return {"lists": [list(k) for k in distinct], "codes": codes}


def _verification(summary: dict[str, Any]) -> dict[str, Any] | None:
    """Attribution's exact re-check: the estimate/exact pairs and their correlations."""
    found = summary.get("attribution_verification")
    if not found:
        verifications = summary.get("attribution_verifications") or {}
        found = next(iter(verifications.values()), None) if isinstance(verifications, dict) else None
    return found if isinstance(found, dict) else None


def _controls(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Each control's spread of effects beside the real run's, and its grid."""
    out = []
    for name, entry in (summary.get("controls") or {}).items():
        out.append(
            {
                "name": name,
                "metric": entry.get("metric"),
                "spread": entry.get("spread"),
                "real_spread": entry.get("real_spread"),
            }
        )
    return out
