"""A `--set` typo names the key the user typed and the nearest real one (issue #27)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ivx.config import loader
from ivx.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_prompt_file_typo_names_the_typed_key() -> None:
    with pytest.raises(ConfigError) as info:
        loader.load(ROOT / "configs" / "causal_trace.yaml", ["prompts.limt=5"])
    [problem] = info.value.problems
    assert problem.path == "prompts.limt"
    assert "unknown key 'limt'; did you mean 'limit'?" in problem.message


def test_prompt_file_key_itself_still_validates() -> None:
    cfg = loader.load(ROOT / "configs" / "causal_trace.yaml", ["prompts.limit=3"])
    assert len(cfg.records) == 3
