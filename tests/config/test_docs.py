"""`ivx schema` documents exactly the fields the validator accepts."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from ivx.cli.app import app
from ivx.config import docs, fields

ROOT = Path(__file__).resolve().parents[2]


def test_every_field_of_every_section_is_documented() -> None:
    for name, model in docs.sections().items():
        rows = docs.rows(name)
        assert [r["field"] for r in rows] == list(model.model_fields), name
        for row in rows:
            assert row["description"], f"{name}.{row['field']} has no description"
            assert row["type"] != "Any", f"{name}.{row['field']} has no readable type"
    batch = {r["field"]: r for r in docs.rows("batch")}
    assert batch["skip_noop"]["default"] == "True" and batch["size"]["type"] == "int | 'auto'"
    kinds = {r["field"]: r for r in docs.rows("interventions")}["kind"]["type"]
    assert all(kind in kinds for kind in fields.KINDS)


def test_committed_reference_is_current() -> None:
    committed = (ROOT / "docs" / "config_reference.md").read_text()
    assert committed.strip() == docs.markdown().strip(), (
        "docs/config_reference.md is stale: ivx schema --markdown > docs/config_reference.md"
    )


def test_schema_command() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["schema", "corrupt"])
    assert result.exit_code == 0 and "samples" in result.output and "sigma" in result.output
    result = runner.invoke(app, ["schema", "corupt"])
    assert result.exit_code == 2 and "did you mean 'corrupt'" in result.output
