"""A corpus of malformed and malicious configs: each exits 2 with one clear line, no traceback.

The corpus lives in tests/data/bad_configs (regenerate with its make_corpus.py); each file's
first line says `# expect: <text>` that the error line must contain.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ivx.cli.app import app

CORPUS = Path(__file__).resolve().parents[1] / "data" / "bad_configs"
CASES = sorted(CORPUS.glob("*.yaml"))
runner = CliRunner()


def expectation(path: Path) -> str:
    first = path.read_bytes().split(b"\n", 1)[0].decode()
    assert first.startswith("# expect: "), path
    return first.removeprefix("# expect: ")


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_bad_config_exits_2_with_one_clear_line(path: Path) -> None:
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    problems = [line for line in lines if not line.endswith("problem(s) found; nothing was run.")]
    assert len(problems) == 1, result.output
    assert expectation(path) in problems[0], result.output
    assert problems[0].startswith((str(path), "error: ")) or "  " in problems[0], problems[0]


def test_bad_configs_are_refused_by_run_too(tmp_path: Path) -> None:
    """`run` rejects what `validate` rejects, before writing a run directory."""
    for name in (
        "bundle_weights_tampered",
        "pickle_vector",
        "batch_size_zero",
        "trust_remote_code_yes",
        "sigma_subjects_without_subject",
        "trainable_without_bundle",
    ):
        path = next(CORPUS.glob(f"*_{name}.yaml"))
        result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path), "--quiet"])
        assert result.exit_code == 2, result.output
        assert expectation(path) in result.output
    assert not list(tmp_path.iterdir())


def test_validate_caps_the_plan_unless_forced(tmp_path: Path) -> None:
    """The cap counts cells (prompts × grid) before building them; --force lifts it."""
    from tests.results.durable import write_config

    config = write_config(tmp_path, prompts=2)
    ok = runner.invoke(app, ["validate", str(config)])
    assert ok.exit_code == 0, ok.output
    cells = int(ok.output.split("cells", 1)[1].split()[0])
    assert "peak memory ~" in ok.output and "run time" in ok.output
    capped = runner.invoke(app, ["validate", str(config), "--max-cells", str(cells - 1)])
    assert capped.exit_code == 2
    assert f"the plan has {cells:,} cells" in capped.output and f"--max-cells {cells - 1:,}" in capped.output
    assert runner.invoke(app, ["validate", str(config), "--max-cells", str(cells)]).exit_code == 0
    forced = runner.invoke(app, ["validate", str(config), "--max-cells", "1", "--force"])
    assert forced.exit_code == 0, forced.output
