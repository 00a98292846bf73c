"""Pages over several runs: the index of a runs directory (name, status, cells, time, key metric,
a link to each report) and the side-by-side comparison of two runs on the same grid (A, B and
B − A per metric, the same figure shapes as the reports)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from ivx.results import gridplot, rundir, runs
from ivx.results import tables as report
from ivx.results.report import figures, page
from ivx.results.report import payload as run_payload
from ivx.results.report.panels import colour, fmt


def key_metric(summary: dict[str, Any]) -> str:
    """The headline number of a run: its main metric's largest grid mean (DAS: best IIA)."""
    if isinstance(summary.get("best_iia"), int | float):
        return f"best iia {fmt(summary['best_iia'])}"
    metric = report.primary_metric(summary.get("metrics", []))
    values = [e[metric] for e in summary.get("grid") or [] if isinstance(e.get(metric), int | float)]
    if not metric or not values:
        return "-"
    return f"{metric} {fmt(values[0])}" if len(values) == 1 else f"max {metric} {fmt(max(values))}"


def write_index(root: Path) -> Path:
    """root/index.html: one row per run directory, linking to its report.html."""
    rows = []
    for entry in runs.listing(root):
        run_dir = root / entry["run"]
        summary = run_payload.read_json(run_dir / "summary.json")
        name = html.escape(str(entry["name"] or entry["run"]))
        link = (
            f"<a href='{html.escape(entry['run'])}/report.html'>{name}</a>"
            if (run_dir / "report.html").is_file()
            else f"{name} <small>(no report: ivx report {html.escape(str(run_dir))})</small>"
        )
        cells = [link, html.escape(entry["run"]), entry["kind"], entry["status"], str(entry["cells"])]
        cells += [entry["wall time"], key_metric(summary), entry["created"]]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = ["run", "directory", "kind", "status", "cells", "time", "key metric", "created"]
    table = "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(rows)
    body = (
        f"<header><h1>Runs in {html.escape(str(root))}</h1><p class='meta'>{len(rows)} runs</p></header>"
        f"<table class='data' id='runs'>{table}</table>"
    )
    path = root / "index.html"
    rundir.write_text(path, _shell(f"ivx runs: {root}", body))
    return path


def write_compare(run_a: Path, run_b: Path, out: Path) -> Path:
    """A page with, per shared metric, A's figure, B's figure and the B − A figure (same grid)."""
    a, b = (run_payload.read_json(r / "summary.json") for r in (run_a, run_b))
    runs.check_comparable(a, b, run_a.name, run_b.name)
    metrics = [m for m in a.get("metrics", []) if m in b.get("metrics", [])]
    figs, trios = [], []
    for metric in metrics:
        diff = {**a, "name": f"B − A ({run_b.name} − {run_a.name})", "grid": runs.difference(a, b, metric)}
        diff["prompts"] = []  # a difference has no corrupted baseline: centred on 0
        trio = []
        for tag, summary in (("A", a), ("B", b), ("diff", diff)):
            fig = figures.grid_figure(summary, metric, summary.get("prompts") or [])
            if fig is not None:
                trio.append({**fig, "id": f"{tag}-{metric}", "section": "results", "click": None})
        _share_scale(trio[:2], metric, gridplot.baseline(a, metric) if metric in gridplot.RAW else None)
        figs += trio
        trios.append(trio)
    header, rows = runs.compare(a, b)
    table = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
    table += "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    divs = "".join(
        "<div class='trio'>"
        + "".join(
            f"<div class='figure' id='fig-{f['id']}'><h3>{html.escape(f['id'].split('-')[0])}: "
            f"{html.escape(f['title'])}</h3><div class='plot'></div></div>"
            for f in trio
        )
        + "</div>"
        for trio in trios
    )
    data = {"figures": figs, "grid": [], "axes": [], "rows": {"n": 0}, "prompts": []}
    body = (
        f"<header><h1>{html.escape(run_a.name)} vs {html.escape(run_b.name)}</h1>"
        f"<p class='meta'>A = {html.escape(str(run_a))} · B = {html.escape(str(run_b))}</p></header>"
        f"<section id='results'><h2>Figures (A, B, B − A)</h2>{divs}</section>"
        f"<section id='table'><h2>Every grid point</h2><table class='data' id='compare'>{table}</table>"
        "</section>"
    )
    rundir.write_text(out, _shell(f"ivx compare: {run_a.name} vs {run_b.name}", body, data))
    return out


def _share_scale(pair: list[dict[str, Any]], metric: str, centre: float | None) -> None:
    """A and B heatmaps on one colour axis computed from both (equal colours mean equal values)."""
    if len(pair) != 2 or not all("coloraxis" in f["layout"] for f in pair):
        return
    values = [
        v
        for f in pair
        for t in f["data"]
        for line in t.get("z") or []
        for v in line
        if isinstance(v, int | float)
    ]
    shared = colour(metric, values, centre)
    for f in pair:
        f["layout"]["coloraxis"] = shared


def _shell(title: str, body: str, data: dict[str, Any] | None = None) -> str:
    """A page with the report's style, and the report's script when it has figures."""
    css = (page.ASSETS / "report.css").read_text()
    script = ""
    if data is not None:
        script = (
            f"<div id='status' class='status'>loading figures…</div><select id='prompt-pick' hidden></select>"
            f"<script type='application/json' id='ivx-data'>{page.script_json(data)}</script>"
            f"<script type='application/octet-stream' id='plotly-gz'>{page.plotly_js()}</script>"
            f"<script>{(page.ASSETS / 'report.js').read_text()}</script>"
        )
    return (
        f"<!doctype html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{css}</style></head><body>\n{body}\n{script}\n</body></html>\n"
    )
