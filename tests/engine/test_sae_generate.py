"""Feature steering in ivx generate equals a hand-written decoding loop adding c × W_dec[j]."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file

from ivx.config.inputs import PromptRecord
from ivx.config.schema import Experiment
from ivx.engine import decoding
from ivx.model import loading as models
from ivx.model import sae as saes
from ivx.recipes import generate
from tests.recipes.test_generate import PROMPTS, hand_loop

FEATURE = 9


@pytest.mark.parametrize(("on", "use_cache"), [("all", True), ("prompt", False), ("generated", True)])
def test_feature_addition_equals_decoder_row_steering(
    on: str, use_cache: bool, tiny_model_dir, tmp_path: Path
) -> None:
    model_dir = tiny_model_dir("gpt2")
    lm = models.load(str(model_dir))
    sae_dir = saes.save(
        saes.random_sae(d_in=32, d_sae=24, hook_name="blocks.0.hook_resid_post", seed=2), tmp_path / "sae"
    )
    exp = Experiment.model_validate(
        {
            "model": {"name": str(model_dir)},
            "prompts": [{"base": p} for p in PROMPTS],
            "saes": [{"name": "s", "path": str(sae_dir)}],
            "interventions": [
                {
                    "kind": "addition",
                    "sae": "s",
                    "feature": FEATURE,
                    "position": [1, -1],
                    "on": on,
                    "coefficient": 2.0,
                }
            ],
            "generate": {"max_new_tokens": 5, "use_cache": use_cache},
        }
    )
    items, _ = generate.resolve(lm, exp, [PromptRecord(base=p) for p in PROMPTS], tmp_path)
    got = decoding.run_generation(lm, PROMPTS, items, exp.generate, 0)
    row = load_file(str(sae_dir / "sae_weights.safetensors"))["W_dec"][FEATURE]  # [d_in]
    for out in got:
        want = hand_loop(lm, "gpt2", PROMPTS[out["prompt_index"]], row, on, [1, -1], 5)
        assert out["token_ids"] == want, (on, use_cache, out["prompt_index"])
    plain = decoding.run_generation(lm, PROMPTS, [], exp.generate, 0)
    assert any(a["token_ids"] != b["token_ids"] for a, b in zip(plain, got, strict=True))
