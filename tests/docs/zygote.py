"""A fork server for the docs' fast tier: torch, transformers and ivx imported once, each command forked.

Every `ivx ...` in a fast ```bash block and every fast ```python group used to start a fresh
interpreter that spent ~5 s of CPU importing torch and transformers before doing ~0.5 s of work.
Here one server process (per pytest session, shared by its xdist workers) imports them once; a
command is a thin client (`ivx` shim first on PATH) that hands the server its argv, working
directory, environment and standard streams, and the server forks a child that runs exactly what
the console script runs (`ivx.cli.app.main`, or `python -c CODE` for python blocks) in that
directory with that environment, and reports the child's exit status back.

What differs from a fresh process: modules are already imported (torch was loaded by the server,
with OMP_WAIT_POLICY=PASSIVE as `ivx` would set, so a run's manifest says ivx did not set it), and
import-time reads of the environment saw the server's (the docs environment of the first page that
asked). The slow tier (`test_every_block_runs`) runs every page's blocks, fast ones included, in
fresh processes, so nothing is checked only this way.
`IVX_DOCS_ZYGOTE=0` turns the server off. Linux only (fork + SCM_RIGHTS); elsewhere it is off.

Run as a script: `python zygote.py SOCKET OWNER_PID` serves until the owner process (the pytest
session) is gone or no request came for IDLE seconds.
"""

from __future__ import annotations

import atexit
import fcntl
import importlib
import io
import json
import os
import pkgutil
import resource
import select
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path

IDLE = 600.0  # seconds without a request before the server exits on its own
STARTUP_TIMEOUT = 300.0
HEAVY = (
    "torch",
    "transformers",
    "transformers.models.gpt2.modeling_gpt2",  # ivx-toy's architecture
    "transformers.tokenization_utils_tokenizers",
    "safetensors.torch",
    "pydantic",
)
SHIM = """#!{python} -I
# ivx docs fork-server client (tests/docs/zygote.py): runs this command in the server's fork
import json, os, socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect({socket!r})
name = os.path.basename(sys.argv[0])
request = json.dumps({{"argv": [name, *sys.argv[1:]], "cwd": os.getcwd(), "env": dict(os.environ)}}).encode()
socket.send_fds(s, [b"r"], [0, 1, 2])
s.sendall(struct.pack("!I", len(request)) + request)
reply = b""
while len(reply) < 4:
    chunk = s.recv(4 - len(reply))
    if not chunk:
        sys.stderr.write("ivx docs fork server: the connection closed before an exit status\\n")
        os._exit(70)
    reply += chunk
code = struct.unpack("!i", reply)[0]
if code < 0:
    os.kill(os.getpid(), -code)
os._exit(code)
"""


def enabled() -> bool:
    """The fork server is used: Linux, and not turned off with IVX_DOCS_ZYGOTE=0."""
    return sys.platform == "linux" and os.environ.get("IVX_DOCS_ZYGOTE", "1") != "0"


def _owner() -> int:
    """The pytest session's process: the xdist controller for a worker, else this process."""
    return os.getppid() if os.environ.get("PYTEST_XDIST_WORKER") else os.getpid()


def _ping(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(path))
            socket.send_fds(s, [b"p"], [])
            return s.recv(2) == b"ok"
    except OSError:
        return False


def shims(env: dict[str, str]) -> Path:
    """A directory holding the `ivx` and `python-fork` clients of this session's server (started on
    first use, shared by the session's workers)."""
    owner = _owner()
    name = f"ivx-docs-zygote-{os.getuid()}-{owner}"
    base = Path(tempfile.gettempdir()) / name
    if len(str(base / "sock")) > 100:  # a Unix socket's path is short
        base = Path("/tmp") / name
    base.mkdir(exist_ok=True)
    path = base / "sock"
    with open(base / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _ping(path):
            _start(path, owner, env, base / "server.log")
        for name in ("ivx", "python-fork"):
            shim = base / "bin" / name
            if not shim.exists():
                shim.parent.mkdir(exist_ok=True)
                shim.write_text(SHIM.format(python=sys.executable, socket=str(path)))
                shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    return base / "bin"


def _start(path: Path, owner: int, env: dict[str, str], log: Path) -> None:
    """Start the server detached (its own session) and wait until it answers."""
    path.unlink(missing_ok=True)
    env = {**env, "OMP_WAIT_POLICY": env.get("OMP_WAIT_POLICY", "PASSIVE")}  # what `ivx` sets before torch
    with open(log, "a") as out:
        proc = subprocess.Popen(
            [sys.executable, __file__, str(path), str(owner)],
            env=env,
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not _ping(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                f"the docs fork server did not start (IVX_DOCS_ZYGOTE=0 runs the docs without it); "
                f"its log, {log}:\n{log.read_text()[-3000:]}"
            )
        time.sleep(0.05)
    proc.returncode = 0  # it outlives this worker on purpose: no "still running" warning at exit


def _preload() -> None:
    """Import what the docs' commands import (heavy libraries and every ivx module); no work."""
    for name in HEAVY:
        importlib.import_module(name)
    import ivx

    for module in pkgutil.walk_packages(ivx.__path__, "ivx."):
        if module.name.endswith(".__main__"):  # runs the CLI when imported
            continue
        try:
            importlib.import_module(module.name)
        except Exception:  # an optional extra that is not installed: the child imports it (and fails) itself
            pass


def _read_request(conn: socket.socket) -> tuple[bytes, list[int], dict | None]:
    """(kind, fds, request): kind b"p" is a ping, b"r" a command with its stdin/stdout/stderr."""
    conn.settimeout(30)
    kind, fds, _, _ = socket.recv_fds(conn, 1, 3)
    if kind != b"r":
        return kind, fds, None
    head = b""
    while len(head) < 4:
        head += conn.recv(4 - len(head))
    size, body = struct.unpack("!I", head)[0], b""
    while len(body) < size:
        body += conn.recv(min(1 << 20, size - len(body)))
    return kind, fds, json.loads(body)


def _child(request: dict, fds: list[int]) -> None:
    """In the forked child: become the requested process, run it, exit with its status."""
    os.setpgid(0, 0)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = io.TextIOWrapper(open(0, "rb", closefd=False), encoding="utf-8")
    sys.stdout = io.TextIOWrapper(open(1, "wb", closefd=False), encoding="utf-8")
    sys.stderr = io.TextIOWrapper(
        open(2, "wb", closefd=False), encoding="utf-8", errors="backslashreplace", line_buffering=True
    )
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    tempfile.tempdir = None
    argv = request["argv"]
    code = 1
    try:
        if argv[0] == "ivx":
            sys.argv, sys.path[0] = argv, str(Path(sys.executable).parent)
            from ivx.cli.app import main

            main()  # exits through ivx.core.startup.leave
            code = 0
        else:  # python-fork CODE ARGS...: `python -c CODE ARGS...`
            sys.argv, sys.path[0] = ["-c", *argv[2:]], ""
            main_module = types.ModuleType("__main__")
            sys.modules["__main__"] = main_module
            exec(compile(argv[1], "<string>", "exec"), main_module.__dict__)
            code = 0
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except BaseException:
        traceback.print_exc()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def serve(path: Path, owner: int) -> None:
    """Accept commands until the owner is gone or IDLE seconds pass without one."""
    _preload()
    sys.stdout.flush()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    running: dict[int, socket.socket] = {}  # child pid -> its client's connection
    last = time.monotonic()
    while _alive(owner) and (running or time.monotonic() - last < IDLE):
        ready, _, _ = select.select([listener, *running.values()], [], [], 0.05)
        for conn in ready:
            if conn is listener:
                last = time.monotonic()
                _accept(listener, running)
            else:  # a client went away (killed by a timeout): so does its command
                pid = next(p for p, c in running.items() if c is conn)
                _kill(pid)
        _reap(running)
    path.unlink(missing_ok=True)  # first: a new server may bind the path once a ping fails
    listener.close()
    for pid in running:
        _kill(pid)
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    stats = os.environ.get("IVX_DOCS_ZYGOTE_STATS")  # where to append the CPU it spent (measuring)
    if stats:
        with open(stats, "a") as out:
            cpu = (own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime)
            out.write(f"docs fork server cpu seconds: server {cpu[0]:.2f}, commands {cpu[1]:.2f}\n")
    if not _alive(owner):  # else an idle exit: the session may start a new server in this directory
        shutil.rmtree(path.parent, ignore_errors=True)


def _accept(listener: socket.socket, running: dict[int, socket.socket]) -> None:
    conn, _ = listener.accept()
    try:
        kind, fds, request = _read_request(conn)
    except (OSError, ValueError):
        conn.close()
        return
    if request is None:
        conn.sendall(b"ok")
        conn.close()
        return
    pid = os.fork()
    if pid == 0:
        listener.close()
        for other in running.values():
            other.close()
        conn.close()
        _child(request, fds)
    for fd in fds:
        os.close(fd)
    running[pid] = conn


def _reap(running: dict[int, socket.socket]) -> None:
    while running:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            return
        conn = running.pop(pid, None)
        if conn is not None:
            try:
                conn.sendall(struct.pack("!i", os.waitstatus_to_exitcode(status)))
            except OSError:
                pass
            conn.close()


def _kill(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


if __name__ == "__main__":
    serve(Path(sys.argv[1]), int(sys.argv[2]))
