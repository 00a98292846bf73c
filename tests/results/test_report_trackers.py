"""Trackers (`output.trackers`), offline: W&B in offline mode (its transaction log read back) and
MLflow's file store; a tracker or report failure warns and never loses the run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ivx.cli.app import app
from ivx.results import publish, trackers

ROOT = Path(__file__).resolve().parents[2]
HEADS = ROOT / "configs" / "activation_patching_heads.yaml"
QUICK = ["-q", "--set", "prompts.limit=2"]
runner = CliRunner()


def wandb_records(path: Path) -> list[Any]:
    """The protobuf records of a W&B transaction log (LevelDB log framing: 32 KiB blocks, 7-byte
    record headers; the file starts with a 7-byte W&B header)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, out, pending = path.read_bytes(), 7, [], b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # block trailer padding
            pos += 32768 - pos % 32768
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4) and pending:  # a full record, or the last fragment of one
            record = pb.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


@pytest.mark.slow  # W&B starts its service process and MLflow imports much: ~10 s of CPU
def test_wandb_and_mlflow_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    args = [
        "run",
        str(HEADS),
        "--out",
        str(tmp_path / "runs"),
        *QUICK,
        "--set",
        "output.trackers=[wandb,mlflow]",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    run_dir = Path(result.output.strip().splitlines()[-1])
    summary = json.loads((run_dir / "summary.json").read_text())
    best = max(e["logit_diff_norm"] for e in summary["grid"])
    # MLflow: parameters = the resolved config, metrics from the summary, plots and the run dir
    client = mlflow.tracking.MlflowClient()
    found = client.search_runs([client.get_experiment_by_name("ivx").experiment_id])
    assert len(found) == 1 and found[0].info.run_name == run_dir.name
    assert found[0].data.params["model.name"] == '"ivx-toy"' and found[0].data.params["prompts.count"] == "2"
    assert found[0].data.metrics["logit_diff_norm/max"] == pytest.approx(best)
    stored = {a.path for a in client.list_artifacts(found[0].info.run_id, "run")}
    assert {"run/summary.json", "run/results.csv", "run/report.html"} <= stored
    assert {a.path for a in client.list_artifacts(found[0].info.run_id, "plots")} == {
        f"plots/{p.name}" for p in (run_dir / "plots").glob("*.png")
    }
    # W&B: one offline run under the run's name, its config, metrics and the run dir as an artifact
    (log,) = list(tmp_path.glob("wandb/offline-run-*/*.wandb"))
    records = wandb_records(log)
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.display_name == run_dir.name and run.project == "ivx"
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    assert config["model"]["name"] == "ivx-toy" and config["prompts"] == {"count": 2}
    history = next(r.history for r in records if r.WhichOneof("record_type") == "history")
    logged = {"/".join(i.nested_key) or i.key: i.value_json for i in history.item}
    assert float(logged["logit_diff_norm/max"]) == pytest.approx(best)
    artifact = next(r.artifact for r in records if r.WhichOneof("record_type") == "artifact")
    assert artifact.name == run_dir.name and artifact.type == "ivx-run"
    assert {"summary.json", "results.csv"} <= {c.path for c in artifact.manifest.contents}


def test_tracker_and_report_failures_warn_and_keep_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(run_dir: Path) -> None:
        raise ConnectionError("tracker server unreachable")

    monkeypatch.setitem(trackers.TRACKERS, "wandb", broken)
    result = runner.invoke(
        app, ["run", str(HEADS), "--out", str(tmp_path), *QUICK, "--set", "output.trackers=[wandb]"]
    )
    assert result.exit_code == 0, result.output
    assert "warning: tracker wandb failed (ConnectionError: tracker server unreachable)" in result.output
    (run_dir,) = [p.parent for p in tmp_path.glob("*/manifest.json")]
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "complete"
    assert (run_dir / "report.html").is_file() and (run_dir / "results.csv").is_file()

    def no_report(run_dir: Path) -> Path:
        raise OSError("disk full")

    monkeypatch.setattr(publish.page, "write", no_report)
    warned: list[str] = []
    publish.publish(run_dir, type("Output", (), {"report": True, "trackers": ["wandb"]})(), warned.append)
    assert warned[0].startswith("warning: report.html not written (OSError: disk full)")
    assert "ivx report" in warned[0] and "tracker wandb failed" in warned[1]


def test_unknown_tracker_is_a_config_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(HEADS), "--set", "output.trackers=[neptune]"])
    assert result.exit_code == 2 and "output.trackers" in result.output
