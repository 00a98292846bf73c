"""A run's input fingerprint covers its SAEs, so `--resume` refuses a changed SAE."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import yaml

from ivx.config import loader
from ivx.model import sae as saes
from ivx.store import fingerprint


def test_sae_files_are_fingerprinted(tmp_path: Path) -> None:
    saes.save(saes.random_sae(seed=1), tmp_path / "a")
    saes.save(saes.random_sae(seed=2), tmp_path / "b")
    data = {
        "model": {"name": "ivx-toy"},
        "prompts": [{"base": "x", "target": " y"}],
        "saes": [{"name": "first", "path": "a"}],
        "interventions": [
            {"kind": "zero", "sae": "first", "feature": 1},
            {"kind": "zero", "sae": "b", "feature": 2},
        ],
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    lm = SimpleNamespace(path=tmp_path / "no-model", name="m", revision="r", model=None)
    before = fingerprint.inputs(loader.load(tmp_path / "c.yaml"), lm)
    assert {str(tmp_path / d / f) for d in "ab" for f in ("cfg.json", "sae_weights.safetensors")} <= set(
        before
    )
    saes.save(saes.random_sae(seed=3), tmp_path / "b")
    fingerprint._CACHE.clear()
    after = fingerprint.inputs(loader.load(tmp_path / "c.yaml"), lm)
    key = str(tmp_path / "b" / "sae_weights.safetensors")
    assert after[key] != before[key]
