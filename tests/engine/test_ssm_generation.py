"""ivx generate on state-space and hybrid models equals a hand-hooked greedy loop, with their caches.

The loop recomputes the whole sequence at every step (no cache) with a hook written here; ivx
decodes with the model's own cache (Mamba's recurrent state, a hybrid's mixed cache) and without.
Prompts of different lengths are decoded together, so left padding must not leak into a
recurrent state either.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from ivx.config.inputs import PromptRecord
from ivx.engine import decoding
from ivx.model import loading as models
from ivx.recipes import generate
from tests.engine.test_ssm import ssm_dir  # noqa: F401 - the fixture
from tests.recipes.test_generate import experiment

PROMPTS = ["When Mary and John went to the store , John gave a drink to", "The Space Needle is in downtown"]
BLOCK0 = {"mamba": "backbone.layers.0", "mamba2": "backbone.layers.0", "jamba": "model.layers.0"}
for _arch in ("bamba", "falcon_h1", "zamba2"):
    BLOCK0[_arch] = "model.layers.0"


def hand_loop(model: Any, tok: Any, module: str, text: str, vec: torch.Tensor, n: int) -> list[int]:
    """Greedy, full recompute per step; add 2·vec to block 0's output at prompt positions 1 and -1
    and at every generated token (`on: all`)."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    length = len(ids)
    out: list[int] = []
    for _ in range(n):
        seq = torch.tensor([ids])

        def hook(mod: Any, args: Any, o: Any) -> Any:
            h = (o[0] if isinstance(o, tuple) else o).clone()
            for c in [1, length - 1, *range(length, seq.shape[1])]:
                h[0, c] = h[0, c] + 2.0 * vec
            return (h, *o[1:]) if isinstance(o, tuple) else h

        handle = model.get_submodule(module).register_forward_hook(hook)
        try:
            with torch.no_grad():
                nxt = int(model(seq).logits[0, -1].argmax())
        finally:
            handle.remove()
        ids.append(nxt)
        out.append(nxt)
    return out


def check(arch: str, model_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    lm = models.load(str(model_dir))
    vec = torch.randn(lm.info.d_model, generator=torch.Generator().manual_seed(1))
    save_file({"vector": vec}, str(tmp_path / "v.safetensors"))
    want = [hand_loop(lm.model, lm.tokenizer, BLOCK0[arch], p, vec, 5) for p in PROMPTS]
    for use_cache in (True, False):
        exp = experiment(model_dir, "all", use_cache, 5, tmp_path / "v.safetensors")
        items, _ = generate.resolve(lm, exp, [PromptRecord(base=p) for p in PROMPTS], tmp_path)
        got = decoding.run_generation(lm, PROMPTS, items, exp.generate, 0)
        assert [row["token_ids"] for row in got] == want, use_cache


@pytest.mark.parametrize("arch", ["mamba", "jamba"])
def test_generation_equals_hand_loop(arch: str, ssm_dir, tmp_path: Path) -> None:  # noqa: F811
    check(arch, ssm_dir(arch), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["mamba2", "bamba", "falcon_h1", "zamba2"])
def test_generation_equals_hand_loop_more_families(arch: str, ssm_dir, tmp_path: Path) -> None:  # noqa: F811
    check(arch, ssm_dir(arch), tmp_path)
