"""Durable runs: nothing a run computed is lost or mixed, and interrupted runs resume exactly.

Each test interrupts a small causal trace of ivx-toy in a different way (full disk, torn part,
a merge that already happened, SIGTERM/SIGINT, a second writer, a changed input) and checks the
resumed run against an uninterrupted one with `durable.snapshot` (byte-identical tensors).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from ivx.cli.app import app
from ivx.results import rundir
from tests.results.durable import ivx, manifest, snapshot, write_config

runner = CliRunner()


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["run", *args, "--quiet"])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def last_line(output: str) -> Path:
    return Path(output.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(config, run dir) of one uninterrupted run."""
    folder = tmp_path_factory.mktemp("reference")
    config = write_config(folder)
    code, out = run(str(config), "--out", str(folder / "runs"))
    assert code == 0, out
    return config, last_line(out)


def copy_run(reference: tuple[Path, Path], tmp_path: Path) -> Path:
    """A copy of the reference run directory (its manifest still points at the same config)."""
    target = tmp_path / reference[1].name
    shutil.copytree(reference[1], target)
    return target


def full_disk_after(monkeypatch: pytest.MonkeyPatch, match: str, n: int) -> None:
    """Make the n-th atomic write of a file whose name starts with `match` fail with ENOSPC."""
    real = rundir.write_bytes
    seen = []

    def write(path: Path, data: bytes) -> None:
        if path.name.startswith(match):
            seen.append(path)
            if len(seen) == n:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, data)

    monkeypatch.setattr(rundir, "write_bytes", write)


def interrupted(config: Path, out: Path, monkeypatch: pytest.MonkeyPatch, parts: int = 3) -> Path:
    """A real interrupted run: the disk fills up at the `parts`-th part file."""
    with monkeypatch.context() as patch:
        full_disk_after(patch, "part-", parts)
        code, output = run(str(config), "--out", str(out))
    assert code == 1, output
    run_dir = next(out.iterdir())
    assert manifest(run_dir)["status"] == "failed"
    assert 0 < len(rundir.Results(run_dir).rows()) < manifest(run_dir)["cells"]
    return run_dir


def test_resume_of_a_complete_run_changes_nothing(reference, tmp_path: Path) -> None:
    run_dir = copy_run(reference, tmp_path)
    before = snapshot(run_dir)
    stamp = (run_dir / "tensors.safetensors").stat().st_mtime_ns
    code, out = run("--resume", str(run_dir))
    assert code == 0, out
    assert "already complete; nothing to resume" in out
    assert snapshot(run_dir) == before
    assert (run_dir / "tensors.safetensors").stat().st_mtime_ns == stamp
    assert (
        len(load_file(str(run_dir / "tensors.safetensors")))
        == manifest(run_dir)["cells"] + 2 * manifest(run_dir)["prompts"]
    )


def test_resume_after_the_merge_keeps_every_tensor(reference, tmp_path: Path) -> None:
    """Killed after the merge (e.g. while plotting): parts are gone, cells live only in the merged file."""
    run_dir = copy_run(reference, tmp_path)
    for name in ("summary.json", "results.csv"):
        (run_dir / name).unlink()
    data = manifest(run_dir)
    data.update(status="failed", error="Interrupted: SIGTERM", seconds=1000.0)
    (run_dir / "manifest.json").write_text(json.dumps(data))
    code, out = run("--resume", str(run_dir))
    assert code == 0, out
    assert snapshot(run_dir) == snapshot(reference[1])
    after = manifest(run_dir)
    assert after["status"] == "complete" and after["error"] is None
    assert after["seconds"] >= 1000.0  # accumulated over sessions
    assert after["cells_noop"] == manifest(reference[1])["cells_noop"] > 0


def test_torn_part_is_recomputed(reference, tmp_path: Path, monkeypatch) -> None:
    """A part file cut short (the disk, not ivx: ivx writes them atomically) is dropped and its
    cells recomputed; the last part holds the last batch, so the rest batches as before."""
    run_dir = interrupted(reference[0], tmp_path, monkeypatch)
    last = sorted((run_dir / "tensors.parts").glob("part-*.safetensors"))[-1]
    last.write_bytes(last.read_bytes()[:100])
    code, out = run("--resume", str(run_dir))
    assert code == 0, out
    assert snapshot(run_dir) == snapshot(reference[1])
    assert not (run_dir / "tensors.parts").exists()


def test_changed_prompt_file_is_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path / "exp")
    code, out = run(str(config), "--out", str(tmp_path / "runs"))
    assert code == 0, out
    run_dir = last_line(out)
    data = manifest(run_dir)
    data.update(status="failed")
    (run_dir / "manifest.json").write_text(json.dumps(data))
    prompts = tmp_path / "exp" / "facts.jsonl"
    lines = prompts.read_text().splitlines()
    lines[0], lines[1] = lines[1], lines[0]
    prompts.write_text("\n".join(lines) + "\n")
    code, out = run("--resume", str(run_dir))
    assert code == 2, out
    assert f"{prompts.resolve()}  <root>  changed since run {run_dir} started" in out
    assert manifest(run_dir)["status"] == "failed"  # untouched


def test_resume_takes_no_config_or_set(reference, tmp_path: Path) -> None:
    run_dir = copy_run(reference, tmp_path)
    code, out = run(str(reference[0]), "--resume", str(run_dir))
    assert code == 2 and "--resume takes no CONFIG argument" in out
    code, out = run("--resume", str(run_dir), "--set", "seed=3")
    assert code == 2 and "--resume takes no --set" in out


def test_garbage_manifest_is_a_clear_error(reference, tmp_path: Path) -> None:
    run_dir = copy_run(reference, tmp_path)
    (run_dir / "manifest.json").write_bytes(b"\x00\xffnot json")
    code, out = run("--resume", str(run_dir))
    assert code == 2
    assert out.strip().startswith("error: ") and "is not valid JSON" in out and len(out.splitlines()) == 1


def test_a_second_writer_is_refused_naming_the_holder(reference, tmp_path: Path, monkeypatch) -> None:
    run_dir = interrupted(reference[0], tmp_path, monkeypatch)
    before = (run_dir / "results.jsonl").read_bytes()
    with rundir.Lock(run_dir):
        code, out = run("--resume", str(run_dir))
    assert code == 2
    assert f"in use by another ivx process (pid {os.getpid()})" in out
    assert (run_dir / "results.jsonl").read_bytes() == before


@pytest.mark.slow  # two fresh ivx processes on 2 cores: ~9 s
def test_two_concurrent_resumes_never_both_write(reference, tmp_path: Path, monkeypatch) -> None:
    run_dir = interrupted(reference[0], tmp_path, monkeypatch, parts=2)
    procs = [ivx("run", "--resume", str(run_dir), "--quiet") for _ in range(2)]
    outcomes = sorted((p.wait(timeout=600), p.stderr.read()) for p in procs)
    codes = [code for code, _ in outcomes]
    # either they overlapped (one refused at once) or the second found the run complete
    assert codes == [0, 2] or codes == [0, 0], outcomes
    if codes == [0, 2]:
        assert "in use by another ivx process (pid" in outcomes[1][1]
    assert snapshot(run_dir) == snapshot(reference[1])


@pytest.mark.parametrize(
    ("match", "n"),
    [("part-", 3), ("plan.jsonl", 1), pytest.param("tensors.safetensors", 1, marks=pytest.mark.slow)],
)
def test_full_disk_marks_failed_and_resume_is_exact(reference, tmp_path, monkeypatch, match, n) -> None:
    with monkeypatch.context() as patch:
        full_disk_after(patch, match, n)
        code, out = run(str(reference[0]), "--out", str(tmp_path))
    assert code == 1
    [line] = out.strip().splitlines()
    assert "No space left on device" in line and "is marked failed" in line
    run_dir = next(tmp_path.iterdir())
    assert manifest(run_dir)["status"] == "failed"
    assert "No space left on device" in manifest(run_dir)["error"]
    code, out = run("--resume", str(run_dir))
    assert code == 0, out
    assert snapshot(run_dir) == snapshot(reference[1])
    assert manifest(run_dir)["error"] is None


def test_failure_before_a_run_dir_exists_says_so(reference, tmp_path, monkeypatch) -> None:
    def full(*args: object) -> Path:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(rundir, "create", full)
    code, out = run(str(reference[0]), "--out", str(tmp_path))
    assert code == 1
    assert "no run directory was written" in out and "marked failed" not in out


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_signal_marks_failed_and_resume_is_exact(reference, tmp_path: Path, sig: signal.Signals) -> None:
    proc = ivx("run", str(reference[0]), "--out", str(tmp_path), "--quiet")
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob("*/tensors.parts/part-*.safetensors")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == (143 if sig == signal.SIGTERM else 130), err
    assert err.strip().splitlines()[-1] == f"resume: ivx run --resume {next(tmp_path.iterdir())}"
    assert "error: run interrupted" in err and "is marked failed" in err and "Traceback" not in err
    run_dir = next(tmp_path.iterdir())
    assert manifest(run_dir)["status"] == "failed"
    code, out = run("--resume", str(run_dir))
    assert code == 0, out
    assert snapshot(run_dir) == snapshot(reference[1])
