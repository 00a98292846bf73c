"""A Hub that accepts connections but never answers: push fails with a clear error, no hang."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ivx.cli.app import app
from tests.store.test_hub import make_bundle

runner = CliRunner()


@pytest.fixture
def silent_server():
    """A TCP server on loopback that accepts and reads but never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                held.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_push_to_a_silent_hub_times_out_clearly(silent_server, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", silent_server)
    monkeypatch.setenv("HF_TOKEN", "secret-token")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("IVX_HUB_TIMEOUT", "0.5")
    src = make_bundle(tmp_path / "b")
    result = runner.invoke(app, ["push", str(src), "--repo", "user/steer"])
    assert result.exit_code == 1, result.output
    assert "did not answer in time" in result.output and "IVX_HUB_TIMEOUT" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_hub_reference_with_dot_dot_is_refused() -> None:
    from ivx.store import hub

    for ref in ("hf://../etc", "hf://user/..", "hf://a/b/c", "hf:///etc"):
        with pytest.raises(hub.HubError, match="is not a Hub repository id"):
            hub.parse_ref(ref)
