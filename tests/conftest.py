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


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """tiny_model_dir("llama") → a saved 2-layer, width-32 random model (built once)."""
    cache: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in cache:
            cache[arch] = build(arch, tmp_path_factory.mktemp(f"tiny-{arch}"))
        return cache[arch]

    return get
