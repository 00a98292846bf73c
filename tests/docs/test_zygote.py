"""The docs fork server behaves like the fresh process it replaces: streams, exit status, signals,
working directory, environment, argv, and a killed client takes its command down with it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ivx.cli.app import app
from tests.docs import zygote
from tests.docs.blocks import ROOT, Block
from tests.docs.test_blocks import environment, execute

pytestmark = pytest.mark.skipif(not zygote.enabled(), reason="the docs fork server is Linux only (or off)")


@pytest.fixture
def shims(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    env = environment(tmp_path)
    return zygote.shims(env), env


def fork_python(
    shims: tuple[Path, dict[str, str]], code: str, *args: str, cwd: Path
) -> subprocess.CompletedProcess:
    folder, env = shims
    command = [str(folder / "python-fork"), code, *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_ivx_prints_what_the_cli_prints_and_exits_with_its_status(shims, tmp_path: Path) -> None:
    folder, env = shims
    done = subprocess.run(
        [str(folder / "ivx"), "schema", "corrupt"], env=env, capture_output=True, text=True, timeout=120
    )
    expected = CliRunner().invoke(app, ["schema", "corrupt"])
    assert done.returncode == expected.exit_code == 0, done.stderr
    assert done.stdout == expected.output and "scale" in done.stdout
    missing = tmp_path / "missing.yaml"
    done = subprocess.run(
        [str(folder / "ivx"), "validate", str(missing)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert str(missing) in done.stderr + done.stdout and "Traceback" not in done.stderr


def test_python_gets_argv_cwd_environment_and_tmpdir(shims, tmp_path: Path) -> None:
    code = (
        "import os, sys, tempfile\n"
        "print(sys.argv, os.getcwd(), os.environ['IVX_DOCS_PROBE'], tempfile.gettempdir(), __name__)\n"
        "sys.stderr.write('to stderr')\n"
        "sys.exit(3)\n"
    )
    folder, env = shims
    env["IVX_DOCS_PROBE"] = "probe-value"
    env["TMPDIR"] = str(tmp_path)
    done = fork_python(shims, code, "a", "b c", cwd=tmp_path)
    assert done.returncode == 3
    assert done.stdout.split(" ", 3)[:3] == ["['-c',", "'a',", "'b"]
    assert done.stdout.rstrip().endswith(f"{tmp_path} probe-value {tmp_path} __main__")
    assert done.stderr == "to stderr"


def test_an_exception_prints_its_traceback_and_exits_1(shims, tmp_path: Path) -> None:
    done = fork_python(shims, "raise ValueError('from the block')", cwd=tmp_path)
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "ValueError: from the block" in done.stderr


def test_a_signal_that_kills_the_command_kills_the_client_alike(shims, tmp_path: Path) -> None:
    done = fork_python(shims, "import os, signal; os.kill(os.getpid(), signal.SIGTERM)", cwd=tmp_path)
    assert done.returncode == -15


def test_killing_the_client_kills_its_command(shims, tmp_path: Path) -> None:
    folder, env = shims
    pid_file = tmp_path / "pid"
    code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    client = subprocess.Popen([str(folder / "python-fork"), code], cwd=tmp_path, env=env)
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and client.poll() is None
        time.sleep(0.01)
    pid = int(pid_file.read_text())
    client.kill()
    client.wait()
    while alive(pid):
        assert time.monotonic() < deadline, f"command {pid} outlived its client"
        time.sleep(0.01)


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_shim_runs_on_this_interpreter(shims) -> None:
    folder, _ = shims
    assert (folder / "ivx").read_text().startswith(f"#!{sys.executable} -I\n")
    assert os.access(folder / "ivx", os.X_OK) and os.access(folder / "python-fork", os.X_OK)


def test_a_failing_block_fails_its_page_naming_the_line(tmp_path: Path) -> None:
    """What the fast tier relies on: a block whose `ivx` exits non-zero fails, with its output."""
    bad = Block(ROOT / "README.md", 7, "bash", "ivx validate configs/no_such_config.yaml\n", ())
    with pytest.raises(pytest.fail.Exception) as failed:
        execute([bad], tmp_path, fork=True)
    assert "README.md:7 exited 2" in str(failed.value) and "no_such_config.yaml" in str(failed.value)
