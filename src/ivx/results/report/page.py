"""report.html: one self-contained page per run that works offline. plotly.js (from the plotly
package) is embedded once per file, gzipped and base64-encoded (about 2 MB instead of 4.8), and
unpacked by the browser's DecompressionStream; the run's data is one JSON block the page's script
draws the figures and the drill-down from; config, manifest, warnings and scored tokens are plain
HTML, readable without JavaScript."""

from __future__ import annotations

import base64
import functools
import gzip
import html
import importlib.metadata
import importlib.util
import json
import math
from pathlib import Path
from typing import Any

from ivx.core.errors import UserError
from ivx.results import rundir
from ivx.results.report import payload as run_payload
from ivx.store import fingerprint

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "report"
SECTIONS = (
    ("results", "Results"),
    ("controls", "Controls (beside the real results above)"),
    ("trace", "Causal trace"),
    ("verification", "Attribution verification"),
    ("das", "DAS: interchange intervention accuracy"),
)


class ReportError(UserError):
    """A report that cannot be written (no run directory, no plotly)."""


def write(run_dir: Path) -> Path:
    """Write (or rebuild) run_dir/report.html from the run directory's files; return its path."""
    if not (run_dir / "manifest.json").is_file():
        raise ReportError(f"{run_dir} is not an ivx run directory (no manifest.json)")
    path = run_dir / "report.html"
    rundir.write_text(path, render(run_payload.collect(run_dir)))
    return path


def plotly_js() -> str:
    """plotly.min.js from the installed plotly package, gzipped and base64-encoded (cached on disk)."""
    spec = importlib.util.find_spec("plotly")  # located, not imported: importing plotly is slow
    if spec is None or spec.origin is None:
        raise ReportError("report.html needs the plotly package: pip install plotly")
    source = Path(spec.origin).parent / "package_data" / "plotly.min.js"
    return _packed(str(source), importlib.metadata.version("plotly"))


@functools.lru_cache(maxsize=2)
def _packed(source: str, version: str) -> str:
    """Compressed once per process; also kept in ivx's cache directory across processes."""
    size = Path(source).stat().st_size
    cache = fingerprint.cache_dir() / f"plotly-{version}-{size}.js.gz.b64"
    if cache.is_file():
        return cache.read_text()
    text = base64.b64encode(gzip.compress(Path(source).read_bytes(), 6, mtime=0)).decode()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        rundir.write_text(cache, text)
    except OSError:
        pass  # a read-only cache directory: compress again next time
    return text


def clean(value: Any) -> Any:
    """A value for strict JSON: NaN and infinities become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def script_json(value: Any) -> str:
    """JSON safe inside a <script> element."""
    text = json.dumps(clean(value), separators=(",", ":"), allow_nan=False)
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


def render(data: dict[str, Any]) -> str:
    """The whole page."""
    e = html.escape
    css = (ASSETS / "report.css").read_text()
    js = (ASSETS / "report.js").read_text()
    body = [
        f"<header><h1>{e(str(data['name']))}</h1><p class='meta'>{_meta(data)}</p></header>",
        _nav(data),
        _warnings(data),
        *(_figure_section(data, key, title) for key, title in SECTIONS),
        _grid_table(data),
        _drill(data),
        _prompts(data),
        _manifest(data),
        f"<section id='config'><h2>Resolved config</h2><pre>{e(data['config'])}</pre></section>",
    ]
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>ivx report: {e(str(data['name']))}</title><style>{css}</style></head><body>\n"
        "<div id='status' class='status'>loading figures…</div>\n"
        + "\n".join(b for b in body if b)
        + f"\n<script type='application/json' id='ivx-data'>{script_json(data)}</script>\n"
        f"<script type='application/octet-stream' id='plotly-gz'>{plotly_js()}</script>\n"
        f"<script>{js}</script>\n</body></html>\n"
    )


def _meta(data: dict[str, Any]) -> str:
    m = data["manifest"]
    model = m.get("model") or {}
    seconds = m.get("seconds")
    parts = [
        f"run <code>{html.escape(data['run'])}</code>",
        f"status <b>{html.escape(str(data['status']))}</b>",
        f"{data['kind']}",
        f"model <code>{html.escape(str(model.get('name', '?')))}</code>",
        f"{m.get('cells_done', m.get('cells', '-'))} cells",
        f"{m.get('prompts', len(data['prompts']))} prompts",
        f"{seconds:.1f} s" if isinstance(seconds, int | float) else "",
        html.escape(str(m.get("started", ""))[:19].replace("T", " ")),
    ]
    return " · ".join(p for p in parts if p)


def _nav(data: dict[str, Any]) -> str:
    present = {f["section"] for f in data["figures"]}
    links = [(k, t) for k, t in SECTIONS if k in present]
    links += [("table", "Summary table")] if data["grid"] else []
    links += [("drill", "Per prompt")] if data["rows"]["n"] else []
    links += [("prompts", "Scored tokens")] if data["prompts"] else []
    links += [("manifest", "Manifest"), ("config", "Config")]
    return "<nav>" + " ".join(f"<a href='#{k}'>{html.escape(t)}</a>" for k, t in links) + "</nav>"


def _warnings(data: dict[str, Any]) -> str:
    items = [*data["warnings"], *(f"dropped: {json.dumps(d)}" for d in data["dropped"])]
    if data["rows_note"]:
        items.append(data["rows_note"])
    if not items:
        return ""
    lis = "".join(f"<li>{html.escape(str(w))}</li>" for w in items)
    return f"<section id='warnings'><h2>Warnings</h2><ul class='warnings'>{lis}</ul></section>"


def _figure_section(data: dict[str, Any], key: str, title: str) -> str:
    figs = [f for f in data["figures"] if f["section"] == key]
    if not figs:
        return ""
    divs = "".join(
        f"<div class='figure' id='fig-{html.escape(f['id'])}' data-figure='{html.escape(f['id'])}'>"
        f"<h3>{html.escape(f['title'])}</h3><div class='plot'></div></div>"
        for f in figs
    )
    hint = (
        "<p class='hint'>Click a cell or point for its per-prompt values below.</p>"
        if key == "results"
        else ""
    )
    return f"<section id='{key}'><h2>{html.escape(title)}</h2>{hint}{divs}</section>"


def _grid_table(data: dict[str, Any]) -> str:
    """Every grid point's mean ± standard error and n, as a table (open when the grid is small)."""
    grid, metrics = data["grid"], data["metrics"]
    if not grid:
        return ""
    axes = [a for a in data["axes"] if any(a in g for g in grid)]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in [*axes, "n", *metrics])
    lines = []
    for g in grid:
        cells = [html.escape(json.dumps(g.get(a))) for a in axes] + [str(g.get("n", "-"))]
        cells += [f"{_num(g.get(m))} ± {_num(g.get(f'{m}_stderr'))}" for m in metrics]
        lines.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    state = " open" if len(grid) <= 20 else ""
    return (
        f"<section id='table'><details{state}><summary>Summary table ({len(grid)} grid points, mean ± s.e.)"
        f"</summary><table class='data' id='grid-table'><tr>{head}</tr>{''.join(lines)}</table>"
        "</details></section>"
    )


def _drill(data: dict[str, Any]) -> str:
    if not data["rows"]["n"]:
        return ""
    options = "".join(
        f"<option value='{p['prompt_index']}'>{p['prompt_index']}: {html.escape(str(p.get('base', ''))[:90])}"
        "</option>"
        for p in data["prompts"]
    )
    return (
        "<section id='drill'><h2>Per prompt</h2>"
        "<p id='drill-where' class='hint'>Click a cell of a results figure to list its per-prompt values.</p>"
        f"<label>prompt <select id='prompt-pick'><option value=''>—</option>{options}</select></label>"
        "<div id='prompt-view'></div><div id='drill-table'></div></section>"
    )


def _prompts(data: dict[str, Any]) -> str:
    if not data["prompts"]:
        return ""
    e = html.escape
    head = (
        "<tr><th>#</th><th>prompt</th><th>target</th><th>foil</th><th>p clean</th><th>p corrupted</th></tr>"
    )
    lines = []
    for p in data["prompts"]:
        clean_p = (p.get("clean") or {}).get("target_prob")
        corrupt_p = (p.get("corrupted") or {}).get("target_prob")
        lines.append(
            f"<tr><td>{p['prompt_index']}</td><td>{e(str(p.get('base', '')))}</td>"
            f"<td><code>{e(repr(p.get('target_tokens')))}</code></td>"
            f"<td><code>{e(repr(p.get('foil_tokens')))}</code></td>"
            f"<td>{_num(clean_p)}</td><td>{_num(corrupt_p)}</td></tr>"
        )
    return (
        "<section id='prompts'><h2>Scored tokens</h2><table class='data'>"
        + head
        + "".join(lines)
        + "</table></section>"
    )


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) and value == value else "-"


def _manifest(data: dict[str, Any]) -> str:
    m = data["manifest"]
    e = html.escape
    versions = {k: m.get(k) for k in ("ivx", "torch", "transformers", "git_sha", "device", "dtype", "seed")}
    rows = "".join(f"<tr><th>{e(k)}</th><td><code>{e(str(v))}</code></td></tr>" for k, v in versions.items())
    inputs = "".join(
        f"<tr><th>{e(k)}</th><td><code>{e(str(v))}</code></td></tr>"
        for k, v in (m.get("inputs") or {}).items()
    )
    shortcuts = json.dumps(m.get("shortcuts"), indent=2) if m.get("shortcuts") else "none recorded"
    return (
        "<section id='manifest'><h2>Manifest</h2><h3>Versions</h3>"
        f"<table class='data' id='versions'>{rows}</table>"
        f"<h3>Input hashes (sha256)</h3><table class='data' id='inputs'>{inputs}</table>"
        f"<h3>Shortcuts engaged</h3><pre id='shortcuts'>{e(shortcuts)}</pre>"
        f"<details><summary>manifest.json</summary><pre>{e(json.dumps(m, indent=2))}</pre></details>"
        "</section>"
    )
