"""Checkpoints AutoModelForCausalLM does not map: a multimodal model's text half saved by its own
causal-LM class (Emu3ForCausalLM writes `emu3_text_model`, MllamaForCausalLM `mllama_text_model`;
transformers maps only `emu3` / `mllama`). ivx loads them with the class their config names, with
and without weights, and lists nothing at the blocks a text-only forward skips (Mllama's
cross-attention layers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ivx.model import components, loading
from tests.tiny import tokenizer

IDS = [[3, 4, 5, 6, 7, 8]]


def _save(model_cls: Any, config: Any, out: Path) -> Any:
    """Save a seeded random `model_cls(config)` with the test tokenizer; return the model."""
    import torch

    torch.manual_seed(0)
    model = model_cls(config).eval()
    model.save_pretrained(out)
    tokenizer().save_pretrained(out)
    return model


def _small() -> dict[str, Any]:
    return {
        **{"vocab_size": len(tokenizer()), "hidden_size": 32, "intermediate_size": 64},
        **{"num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64},
        **{"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0},
    }


@pytest.fixture(scope="module")
def emu3(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    from transformers import Emu3ForCausalLM, Emu3TextConfig

    out = tmp_path_factory.mktemp("emu3")
    return out, _save(Emu3ForCausalLM, Emu3TextConfig(num_hidden_layers=2, **_small()), out)


@pytest.fixture(scope="module")
def mllama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    from transformers import MllamaForCausalLM, MllamaTextConfig

    config = MllamaTextConfig(num_hidden_layers=3, cross_attention_layers=[1], **_small())
    out = tmp_path_factory.mktemp("mllama")
    return out, _save(MllamaForCausalLM, config, out)


def test_transformers_refuses_the_text_half(emu3: tuple[Path, Any]) -> None:
    """The premise: AutoModelForCausalLM itself cannot load what Emu3ForCausalLM saved."""
    from transformers import AutoModelForCausalLM

    with pytest.raises(ValueError, match="Unrecognized configuration class"):
        AutoModelForCausalLM.from_pretrained(emu3[0])


@pytest.mark.parametrize("which", ["emu3", "mllama"])
def test_text_half_loads_with_its_own_class(which: str, request: pytest.FixtureRequest) -> None:
    """ivx loads the checkpoint with the class its config names; logits equal the saved model's."""
    import torch

    path, saved = request.getfixturevalue(which)
    lm = loading.load(str(path))
    assert type(lm.model) is type(saved)
    with torch.no_grad():
        expected = saved(input_ids=torch.tensor(IDS)).logits  # [1, 6, vocab]
        got = lm.model(input_ids=torch.tensor(IDS)).logits
    assert torch.equal(got, expected)
    meta = loading.load(str(path), weights=False)  # `ivx validate` / `ivx components`
    assert type(meta.model) is type(saved)
    assert meta.info == lm.info


def test_unnamed_text_half_keeps_transformers_error(emu3: tuple[Path, Any], tmp_path: Path) -> None:
    """Without `architectures` there is no class to choose: the load error says what failed."""
    import shutil

    copy = Path(shutil.copytree(emu3[0], tmp_path / "emu3"))
    config = json.loads((copy / "config.json").read_text())
    config.pop("architectures")
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(loading.ModelLoadError, match="Unrecognized configuration class"):
        loading.load(str(copy))


def test_cross_attention_layer_has_no_components(mllama: tuple[Path, Any]) -> None:
    """A text-only forward never runs Mllama's cross-attention layer (a hook there never fires), so
    ivx lists nothing there and says where the component does exist."""
    import torch

    lm = loading.load(str(mllama[0]))
    assert lm.info.layers[1] == ()
    assert "block_output" in lm.info.layers[0] and "block_output" in lm.info.layers[2]
    calls = {i: 0 for i in range(3)}
    handles = [
        lm.model.model.layers[i].register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
        for i in range(3)
    ]
    try:
        with torch.no_grad():
            lm.model(input_ids=torch.tensor(IDS))
    finally:
        for handle in handles:
            handle.remove()
    assert calls == {0: 1, 1: 0, 2: 1}
    with pytest.raises(components.ComponentError, match="exists at layers 0, 2"):
        components.resolve(lm.model, lm.info, "block_output", 1)
