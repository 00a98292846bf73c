"""An SAE in a Hub repository's subdirectory loads through hf:// (loopback Hub server)."""

from __future__ import annotations

from pathlib import Path

import torch

from ivx.model import sae as saes
from tests.store.test_hub import fake_hub  # noqa: F401 - the loopback Hub fixture


def test_hf_subdirectory_loads(fake_hub, tmp_path: Path) -> None:  # noqa: F811
    from huggingface_hub import CommitOperationAdd, HfApi

    sae = saes.random_sae("jumprelu", d_in=8, d_sae=12, hook_name="blocks.1.hook_resid_post", seed=4)
    local = saes.save(sae, tmp_path / "local")
    api = HfApi(endpoint=fake_hub.url, token="secret-token")
    api.create_repo("user/saes", exist_ok=True)
    ops = [
        CommitOperationAdd(f"layer_1/{name}", str(local / name))
        for name in ("cfg.json", "sae_weights.safetensors")
    ] + [CommitOperationAdd("other/big.bin", b"not an sae")]
    api.create_commit("user/saes", operations=ops, commit_message="saes")
    got = saes.load("hf://user/saes/layer_1")
    assert got.site() == ("block_output", 1) and torch.equal(got.threshold, sae.threshold)
    x = torch.randn(3, 8)
    assert torch.equal(got.encode(x), sae.encode(x))
    fetched = [r for r in fake_hub.store.requests if "/resolve/" in r]
    assert any("layer_1/sae_weights.safetensors" in r for r in fetched), fetched
    assert not any("other/big.bin" in r for r in fetched)  # only the subdirectory's files
