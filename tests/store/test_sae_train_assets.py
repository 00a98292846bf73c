"""The bundled-SAE table: names map to shipped SAELens-layout directories, anything else to None."""

from __future__ import annotations

from pathlib import Path

from ivx.model import sae as saes
from ivx.store import sae_assets


def test_bundled_names_are_shipped_sae_directories() -> None:
    for name, path in sae_assets.BUNDLED.items():
        assert sae_assets.bundled(name) == path
        assert saes.load(path).hook_name == "blocks.2.hook_resid_post", name
    assert sae_assets.bundled("hf://user/ivx-toy-sae") is None
    assert sae_assets.bundled("./ivx-toy-sae") is None
    assert sae_assets.bundled(Path("ivx-toy-sae")) is None
