"""report.html without a browser: the embedded JSON, figures and hovers against results.csv (recomputed
here from the rows), the page's structure, offline and size; `output.report: false`."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ivx.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
PATCHING = ROOT / "configs" / "activation_patching.yaml"
runner = CliRunner()


class Page(HTMLParser):
    """Script blocks by id, element ids, and every src/href."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: dict[str, str] = {}
        self.ids: list[str] = []
        self.links: list[str] = []
        self._open: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if found.get("id"):
            self.ids.append(str(found["id"]))
        self.links += [str(found[k]) for k in ("src", "href") if found.get(k)]
        if tag == "script":
            self._open = str(found.get("id") or f"inline{len(self.scripts)}")
            self.scripts[self._open] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._open = None

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self.scripts[self._open] += data


def parse(path: Path) -> tuple[Page, dict]:
    page = Page()
    page.feed(path.read_text())
    return page, json.loads(page.scripts["ivx-data"])


@pytest.fixture(scope="module")
def patch_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    args = ["run", str(PATCHING), "--out", str(out), "-q", "--set", "prompts.limit=2"]
    result = runner.invoke(app, [*args, "--set", "output.plots=false"])
    assert result.exit_code == 0, result.output
    return Path(result.output.strip().splitlines()[-1])


def csv_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "results.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_report_is_one_offline_file_under_5_mb(patch_run: Path) -> None:
    path = patch_run / "report.html"
    page, data = parse(path)
    assert path.stat().st_size < 5_000_000
    assert list(page.scripts).count("plotly-gz") == 1 and len(page.scripts["plotly-gz"]) > 1_000_000
    assert not [link for link in page.links if not link.startswith("#")]  # no CDN, no file next to it
    for fig in data["figures"]:  # every figure has its place on the page
        assert f"fig-{fig['id']}" in page.ids
    for section in ("manifest", "config", "prompts", "drill", "inputs", "shortcuts"):
        assert section in page.ids
    text = path.read_text()
    manifest = json.loads((patch_run / "manifest.json").read_text())
    for digest in manifest["inputs"].values():
        assert digest in text  # input hashes shown
    assert manifest["torch"] in text and manifest["transformers"] in text


def test_embedded_rows_equal_results_csv(patch_run: Path) -> None:
    _, data = parse(patch_run / "report.html")
    rows, columns, values = csv_rows(patch_run), data["rows"]["columns"], data["rows"]["values"]
    assert data["rows"]["n"] == len(rows) == 2 * 128
    axes = ("component", "layer", "position")
    by_key = {(row["prompt_index"], *(row[a] for a in axes)): row for row in rows}
    for i in range(data["rows"]["n"]):
        key = (str(columns["prompt_index"][i]), *(str(values[a][columns[a][i]]) for a in axes))
        row = by_key.pop(key)
        for metric in data["rows"]["metrics"]:
            assert columns[metric][i] == float(row[metric])  # exact: the same doubles
        # the highlighted token is the patched position (the plan's edit, read back)
        assert data["positions"]["lists"][data["positions"]["codes"][i]] == [int(row["position"])]
    assert not by_key  # every row of results.csv is embedded once


def test_heatmap_values_and_hovers_are_the_means_of_results_csv(patch_run: Path) -> None:
    _, data = parse(patch_run / "report.html")
    groups: dict[tuple[str, str, str], list[dict[str, str]]] = defaultdict(list)
    for row in csv_rows(patch_run):
        groups[(row["component"], row["layer"], row["position"])].append(row)
    tokens = data["prompts"][0]["tokens"]
    seen = 0
    for metric in data["metrics"]:
        fig = next(f for f in data["figures"] if f["id"] == f"grid-{metric}")
        for trace in fig["data"]:
            assert trace["y"][5].startswith("5 ") and trace["y"][5].endswith(
                tokens[5].strip()
            )  # token labels
            for r, line in enumerate(trace["customdata"]):
                for c, index in enumerate(line):
                    entry = data["grid"][index]
                    mine = groups[(entry["component"], str(entry["layer"]), str(entry["position"]))]
                    mean = sum(float(x[metric]) for x in mine) / len(mine)
                    assert trace["z"][r][c] == pytest.approx(mean, rel=1e-9, abs=1e-12)
                    hover = trace["hovertext"][r][c]
                    assert f"{metric}: {mean:.6g}" in hover and "n=2" in hover and "s.e.:" in hover
                    assert repr(tokens[entry["position"]]) in hover  # the first prompts' tokens
                    seen += 1
    assert seen == 3 * 128


def test_raw_logit_diff_colours_centre_on_the_corrupted_baseline(patch_run: Path) -> None:
    _, data = parse(patch_run / "report.html")
    axis = next(f for f in data["figures"] if f["id"] == "grid-logit_diff")["layout"]["coloraxis"]
    baseline = sum(p["corrupted"]["logit_diff"] for p in data["prompts"]) / len(data["prompts"])
    assert (axis["cmin"] + axis["cmax"]) / 2 == pytest.approx(baseline)


def test_report_false_writes_none_and_ivx_report_rebuilds_it(patch_run: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["run", str(PATCHING), "--out", str(tmp_path), "-q", "--set", "prompts.limit=1"]
        + ["--set", "output.plots=false", "--set", "output.report=false"],
    )
    assert result.exit_code == 0, result.output
    run_dir = Path(result.output.strip().splitlines()[-1])
    assert not (run_dir / "report.html").exists()
    rebuilt = runner.invoke(app, ["report", str(run_dir)])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert (run_dir / "report.html").is_file()
    before = (patch_run / "report.html").read_bytes()
    again = runner.invoke(app, ["report", patch_run.name, "--runs-dir", str(patch_run.parent)])
    assert again.exit_code == 0 and (patch_run / "report.html").read_bytes() == before  # deterministic
    missing = runner.invoke(app, ["report", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "neither a run directory" in missing.output
