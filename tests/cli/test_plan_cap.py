"""`--max-cells` caps every command's plan alike: `ivx generate` and `ivx train` refuse what
`ivx validate --for X` refuses, with the same line, before any weights or run directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ivx.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()
# (command, a config for it, --set overrides)
CASES = [
    ("train", ROOT / "configs" / "das.yaml", []),
    (
        "generate",
        ROOT / "configs" / "activation_patching.yaml",
        ["prompts.limit=2", "sweep.layer=[1]", "sweep.position=[last]"],
    ),
]


@pytest.mark.parametrize(("command", "config", "sets"), CASES, ids=[c[0] for c in CASES])
def test_the_cell_cap_refuses_alike(command: str, config: Path, sets: list[str], tmp_path: Path) -> None:
    args = [x for s in sets for x in ("--set", s)]
    ok = runner.invoke(app, ["validate", str(config), "--for", command, *args])
    assert ok.exit_code == 0, ok.output
    cells = int(ok.output.split("cells", 1)[1].split()[0])
    capped = ["--max-cells", str(cells - 1)]
    checked = runner.invoke(app, ["validate", str(config), "--for", command, *args, *capped])
    ran = runner.invoke(app, [command, str(config), *args, *capped, "--out", str(tmp_path)])
    assert checked.exit_code == ran.exit_code == 2, ran.output
    assert f"the plan has {cells:,} cells" in checked.output
    assert checked.output.splitlines()[0] == ran.output.splitlines()[0]
    assert not any(tmp_path.iterdir())
    forced = runner.invoke(
        app, ["validate", str(config), "--for", command, *args, "--max-cells", "1", "--force"]
    )
    assert forced.exit_code == 0, forced.output
