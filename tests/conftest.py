"""Shared fixtures: tiny models built once per session (offline)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
if "IVX_CACHE_DIR" not in os.environ:  # ivx's digest store: never the user's ~/.cache in tests
    import tempfile

    os.environ["IVX_CACHE_DIR"] = tempfile.mkdtemp(prefix="ivx-test-cache-")

from tests.tiny import build  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_ivx_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts with an empty ivx cache: what one test's validate learned about a model
    (model/skeleton.py) must not answer for another test's."""
    monkeypatch.setenv("IVX_CACHE_DIR", str(tmp_path_factory.mktemp("ivx-cache")))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """tiny_model_dir("llama") → a saved 2-layer, width-32 random model (built once)."""
    cache: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in cache:
            cache[arch] = build(arch, tmp_path_factory.mktemp(f"tiny-{arch}"))
        return cache[arch]

    return get
