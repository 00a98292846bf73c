"""The recorded skeleton answers every structural question exactly as the meta model built from the
same config.json does, for every tiny architecture; a changed config.json never reuses a record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ivx.model import components, skeleton
from ivx.model import loading as models
from ivx.plan import checks, estimate
from tests.tiny import ARCHS


def _both(model_dir: Path) -> tuple[models.LoadedModel, models.LoadedModel]:
    """(built on the meta device and recorded, answered from the record)."""
    built = models.load(str(model_dir), weights=False)
    recorded = models.load(str(model_dir), weights=False)
    assert not isinstance(built.model, skeleton.Skeleton)
    assert isinstance(recorded.model, skeleton.Skeleton)
    return built, recorded


@pytest.mark.parametrize("arch", ARCHS)
def test_the_record_answers_as_the_meta_model(arch: str, tiny_model_dir) -> None:
    built, recorded = _both(tiny_model_dir(arch))
    assert recorded.info == built.info
    for component in built.info.components:
        for layer in range(built.info.n_layers):
            assert components.resolve(recorded.model, recorded.info, component, layer) == components.resolve(
                built.model, built.info, component, layer
            )
    assert components.table(recorded.model, recorded.info) == components.table(built.model, built.info)
    assert estimate.parameters(recorded) == sum(p.numel() for p in built.model.parameters())
    block = [sum(p.numel() for p in components.blocks(m.model)[0].parameters()) for m in (built, recorded)]
    assert block[0] == block[1] > 0
    assert [name for name, _ in recorded.model.named_modules()] == [n for n, _ in built.model.named_modules()]
    for path, _ in built.model.named_modules():
        kids = [n for n, _ in built.model.get_submodule(path).named_children()]
        assert [n for n, _ in recorded.model.get_submodule(path).named_children()] == kids
    assert checks.max_positions(recorded) == checks.max_positions(built)
    assert str(recorded.dtype).removeprefix("torch.") == str(built.dtype).removeprefix("torch.")
    assert recorded.device.type == built.device.type == "meta"
    for name in skeleton.PROBES:
        assert getattr(recorded.model.config, name, None) == getattr(built.model.config, name, None), name
    assert recorded.model._model is None  # nothing above needed the real model


def test_a_question_the_record_cannot_answer_builds_the_real_model(tiny_model_dir) -> None:
    built, recorded = _both(tiny_model_dir("gpt2"))
    assert recorded.model.config.layer_norm_epsilon == built.model.config.layer_norm_epsilon  # recorded
    assert recorded.model._model is None
    head = recorded.model.lm_head  # not in the record: the real meta model answers
    assert recorded.model._model is not None
    assert tuple(head.weight.shape) == tuple(built.model.lm_head.weight.shape)
    with pytest.raises(AttributeError):
        recorded.model.config.no_such_setting  # noqa: B018 - absent in the real config too
    first = next(recorded.model.parameters())  # a parameter's dtype, shape, ...: the real one's
    assert (first.dtype, first.shape) == (
        next(built.model.parameters()).dtype,
        next(built.model.parameters()).shape,
    )
    embedding = recorded.model.get_input_embeddings().weight  # a module's own attribute: the real one's
    assert tuple(embedding.shape) == tuple(built.model.get_input_embeddings().weight.shape)


def test_a_changed_config_is_never_answered_by_an_old_record(tiny_model_dir, tmp_path: Path) -> None:
    source = tiny_model_dir("llama")
    _both(source)
    copy = tmp_path / "llama"
    copy.mkdir()
    for f in source.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    config = json.loads((copy / "config.json").read_text())
    config["num_hidden_layers"] = 3
    (copy / "config.json").write_text(json.dumps(config))
    first = models.load(str(copy), weights=False)
    assert not isinstance(first.model, skeleton.Skeleton)  # a new config.json: built, not recalled
    assert first.info.n_layers == 3
    assert models.load(str(copy), weights=False).info.n_layers == 3


def test_an_unreadable_record_is_rebuilt(tiny_model_dir) -> None:
    model_dir = tiny_model_dir("gpt2")
    _both(model_dir)
    config = skeleton.config_file(str(model_dir), None)
    assert config is not None
    name = skeleton.key(config)
    from ivx.store import fingerprint

    (fingerprint.cache_dir() / "skeletons" / f"{name}.json").write_text("{not json")
    again = models.load(str(model_dir), weights=False)
    assert not isinstance(again.model, skeleton.Skeleton)
    assert isinstance(models.load(str(model_dir), weights=False).model, skeleton.Skeleton)


def test_remote_code_models_are_never_recorded(tiny_model_dir) -> None:
    model_dir = tiny_model_dir("gpt2")
    for _ in range(2):
        lm = models.load(str(model_dir), weights=False, trust_remote_code=True)
        assert not isinstance(lm.model, skeleton.Skeleton)
