"""The model-file digest store: reused across runs, never stale."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from ivx.store import fingerprint


@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("IVX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(fingerprint, "_CACHE", {})
    return tmp_path / "cache" / "sha256.json"


def _weights(path: Path, byte: int) -> bytes:
    data = bytes([byte]) * (3 << 20)  # above the store's 1 MiB threshold
    path.write_bytes(data)
    return data


def test_digest_is_stored_and_reused_by_a_new_process(store: Path, tmp_path: Path, monkeypatch) -> None:
    f = tmp_path / "model.safetensors"
    data = _weights(f, 1)
    assert fingerprint.sha256_file(f) == hashlib.sha256(data).hexdigest()
    assert json.loads(store.read_text())[str(f.resolve())]["sha256"] == hashlib.sha256(data).hexdigest()
    monkeypatch.setattr(fingerprint, "_CACHE", {})  # a new process: only the store remains

    def no_hashing(*a, **k):  # type: ignore[no-untyped-def]
        raise AssertionError("hashed again although the file did not change")

    monkeypatch.setattr(fingerprint.hashlib, "sha256", no_hashing)
    assert fingerprint.sha256_file(f) == hashlib.new("sha256", data).hexdigest()


def test_rewrite_with_restored_mtime_is_hashed_again(store: Path, tmp_path: Path, monkeypatch) -> None:
    f = tmp_path / "model.safetensors"
    _weights(f, 1)
    before = f.stat()
    first = fingerprint.sha256_file(f)
    monkeypatch.setattr(fingerprint, "_CACHE", {})
    with f.open("r+b") as fh:  # same size, same inode, mtime put back: only ctime tells
        fh.write(b"\x02")
    os.utime(f, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert f.stat().st_size == before.st_size and f.stat().st_mtime_ns == before.st_mtime_ns
    second = fingerprint.sha256_file(f)
    assert second != first
    assert second == hashlib.sha256(f.read_bytes()).hexdigest()


def test_unreadable_or_unwritable_store_only_costs_hashing(tmp_path: Path, monkeypatch) -> None:
    f = tmp_path / "model.safetensors"
    data = _weights(f, 3)
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x")
    monkeypatch.setenv("IVX_CACHE_DIR", str(blocker / "cache"))  # cannot be created
    monkeypatch.setattr(fingerprint, "_CACHE", {})
    assert fingerprint.sha256_file(f) == hashlib.sha256(data).hexdigest()
    good = tmp_path / "cache"
    good.mkdir()
    (good / "sha256.json").write_text("{not json")
    monkeypatch.setenv("IVX_CACHE_DIR", str(good))
    monkeypatch.setattr(fingerprint, "_CACHE", {})
    assert fingerprint.sha256_file(f) == hashlib.sha256(data).hexdigest()
    assert (
        json.loads((good / "sha256.json").read_text())[str(f.resolve())]["sha256"]
        == hashlib.sha256(data).hexdigest()
    )
