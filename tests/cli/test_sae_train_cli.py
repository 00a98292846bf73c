"""`ivx sae train`'s command line: argument errors exit 2, an interruption exits 130 naming the resume command."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ivx.cli.app import app
from ivx.recipes import sae_train

runner = CliRunner()


def test_config_and_resume_are_exclusive(tmp_path: Path) -> None:
    for args in ([], [str(tmp_path / "a.yaml"), "--resume", str(tmp_path)]):
        result = runner.invoke(app, ["sae", "train", *args])
        assert result.exit_code == 2 and "give CONFIG or --resume RUN_DIR" in result.output


def test_an_interruption_names_the_run_to_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: object) -> Path:
        on_start = args[5]
        on_start(tmp_path / "run")  # type: ignore[operator]
        raise KeyboardInterrupt

    monkeypatch.setattr(sae_train, "train", interrupted)
    result = runner.invoke(app, ["sae", "train", str(tmp_path / "c.yaml"), "-q"])
    assert result.exit_code == 130
    assert f"ivx sae train --resume {tmp_path / 'run'}" in result.output
