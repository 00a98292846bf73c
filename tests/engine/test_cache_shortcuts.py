"""Exact shortcuts on caches that are not plain keys and values, and on models without a cache.

Tiny random models of the coverage table's architectures (`benchmarks/coverage_models.py`), some
with a config field shrunk so the cache's extra state matters at the prompts' length: DeepSeek-V3.2's
sparse-attention indexer keys (`index_topk` below the prompt length, so the indexer picks), MiniMax's
lightning-attention state beside its cache layers, LongCat-Flash's two cache layers per block,
DeepSeek-V4's compressed and sliding-window caches, a Mistral whose sliding window is shorter than
the prompt, OpenAI GPT (no cache at all) and an RWKV whose forward fails when asked for a cache.
Every cell of a patching run with the default shortcuts equals a forward with a hook written here;
the manifest says which shortcuts engaged and why the others did not.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import coverage_models  # noqa: E402

from ivx.engine import shortcuts, stagger  # noqa: E402
from ivx.model import kvcache  # noqa: E402
from ivx.model import loading as models  # noqa: E402
from ivx.recipes import run as experiment  # noqa: E402
from tests.tiny import tokenizer  # noqa: E402

BASE = "When Mary and John went to the store , John gave a drink to"
SOURCE = "When Tom and James went to the park , James gave a ball to"
POSITIONS = [3, 9]


def _build(model_type: str, out: Path, **fields: Any) -> Path:
    """A tiny random `model_type` (the coverage table's config with `fields` set) saved in `out`
    with the tests' word tokenizer; skip if the installed transformers lacks the architecture."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        pytest.skip(f"{model_type} is not in transformers {transformers.__version__}")
    config = coverage_models.tiny_config(model_type)
    for name, value in fields.items():
        setattr(config, name, value)
    torch.manual_seed(0)
    model = coverage_models.causal_lm_class(model_type)(config).eval()
    model.save_pretrained(out / model_type)
    tokenizer().save_pretrained(out / model_type)
    return out / model_type


def _hand(model: Any, module: str, base: torch.Tensor, source: torch.Tensor, pos: int) -> torch.Tensor:
    """Last-position logits of `base` with `module`'s output at `pos` from the `source` run: [vocab]."""
    target = model.get_submodule(module)
    kept: dict[str, torch.Tensor] = {}

    def first(out: Any) -> torch.Tensor:
        return out[0] if isinstance(out, tuple | list) else out

    def grab(mod: Any, args: Any, out: Any) -> None:
        kept["source"] = first(out).clone()  # [1, seq, d]

    def put(mod: Any, args: Any, out: Any) -> Any:
        patched = first(out).clone()
        patched[:, pos] = kept["source"][:, pos]
        if isinstance(out, list):  # OpenAI GPT's blocks return a list
            return [patched, *out[1:]]
        return (patched, *out[1:]) if isinstance(out, tuple) else patched

    logits = torch.empty(0)
    for ids, hook in ((source, grab), (base, put)):
        handle = target.register_forward_hook(hook)
        try:
            with torch.no_grad():
                logits = model(input_ids=ids, use_cache=False).logits[0, -1].float()
        finally:
            handle.remove()
    return logits


def _patched_run(
    model_dir: Path, tmp_path: Path, component: str, layers: list[int], batch: dict | None = None
) -> tuple[list, dict, dict]:
    """An activation-patching run with the default shortcuts: (rows, tensors, shortcut report)."""
    iv = {
        "kind": "vanilla",
        "component": component,
        "layer": "$layer",
        "position": "$position",
        "source": "source",
    }
    data = {
        "name": "cache",
        "model": {"name": str(model_dir), "bos": False},
        "prompts": [{"base": BASE, "source": SOURCE}],
        "sweep": {"layer": layers, "position": POSITIONS},
        "interventions": [iv],
        "metrics": ["top_k"],
        "output": {"logits": "last", "plots": False, "report": False},
        "batch": batch or {},
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "cache.yaml"
    path.write_text(yaml.safe_dump(data))
    run_dir = experiment.run(path, out_root=str(tmp_path / "runs"), progress=False)
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    report = json.loads((run_dir / "manifest.json").read_text())["shortcuts"]
    return rows, load_file(str(run_dir / "tensors.safetensors")), report


def _check(model_dir: Path, tmp_path: Path, component: str, module: str) -> dict:
    """Every cell equals the hand-hooked forward; returns the run's shortcut report."""
    lm = models.load(str(model_dir))
    rows, tensors, report = _patched_run(model_dir, tmp_path, component, list(range(lm.info.n_layers)))
    assert len(rows) == lm.info.n_layers * len(POSITIONS)
    ids = {t: torch.tensor([lm.tokenizer(t, add_special_tokens=False)["input_ids"]]) for t in (BASE, SOURCE)}
    for row in rows:
        want = _hand(lm.model, module.format(row["layer"]), ids[BASE], ids[SOURCE], row["position"])
        torch.testing.assert_close(tensors[f"cell{row['cell']}"], want, atol=1e-4, rtol=1e-4, msg=str(row))
    return report


def test_cache_rows_follow_the_block_that_uses_each_cache_layer() -> None:
    """Rows sorted by entry block [0, 1, 1, 2]: block k runs the rows entering at or below it; with
    two cache layers per block both hold the block's rows; a block no row runs keeps all rows."""
    assert stagger.cache_rows([0, 1, 1, 2], 3, 3) == [1, 3, 4]
    assert stagger.cache_rows([0, 1, 1, 2], 6, 3) == [1, 1, 3, 3, 4, 4]
    assert stagger.cache_rows([2, 2], 3, 3) == [2, 2, 2]
    assert stagger.cache_rows([1, 2], 4, 3) == [2, 1, 2, 2]  # not a multiple: one cache layer per block


def test_indexer_keys_cut_to_a_prefix_continue_exactly(tmp_path: Path) -> None:
    """DeepSeek-V3.2's cache cut to its first 5 positions (keys, values and the sparse indexer's keys)
    and continued over the rest gives the full forward's logits; without the indexer keys it does not."""
    model_dir = _build("deepseek_v32", tmp_path, index_topk=4)  # the indexer keeps 4 of 14 keys
    lm = models.load(str(model_dir))
    ids = torch.tensor([lm.tokenizer(BASE, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        out = lm.model(input_ids=ids, use_cache=True)
    entries = kvcache.layers(kvcache.returned(out), ids.shape[1])
    assert [len(e) for e in entries] == [3, 3]  # keys, values, indexer keys per layer
    assert entries[0][2].shape == (1, ids.shape[1], lm.model.config.index_head_dim)

    def continued(keep: int) -> torch.Tensor:
        past = kvcache.build(lm.model.config, [kvcache.cut([e], 5, 1)[:keep] for e in entries])
        with torch.no_grad():
            return lm.model(
                input_ids=ids[:, 5:], use_cache=True, **{kvcache.argument(lm.model.forward): past}
            ).logits

    torch.testing.assert_close(continued(3)[0, -1], out.logits[0, -1], atol=1e-5, rtol=1e-5)
    try:
        wrong = continued(2)[0, -1]  # the indexer keys of the prefix left out
    except RuntimeError:
        return
    assert not torch.allclose(wrong, out.logits[0, -1], atol=1e-4)


def test_a_forward_that_fails_with_a_cache_runs_without_one(
    tiny_model_dir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model whose forward raises when asked for a cache (a tiny RWKV's, a RecurrentGemma without
    attention layers) runs with prefix reuse off and that reason, layer reuse on, every cell equal to
    the hand-hooked forward and to the run with every shortcut off."""
    model_dir = tiny_model_dir("gpt2")
    original = shortcuts.forward

    def failing(lm: Any, ids: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("keep_cache", len(args) > 2 and args[2]):  # (all_logits, past, keep_cache, start)
            raise RuntimeError("this model's cache is broken")
        return original(lm, ids, *args, **kwargs)

    monkeypatch.setattr(shortcuts, "forward", failing)
    report = _check(model_dir, tmp_path / "on", "block_output", "transformer.h.{}")
    state = report["shortcuts"]
    assert not state["prefix_reuse"]["on"]
    assert (
        "its forward with a cache failed with RuntimeError: this model's cache is broken"
        in state["prefix_reuse"]["why"]
    )
    assert state["layer_reuse"]["on"] and sum(g["cells_skipping_blocks"] for g in report["groups"]) > 0
    off = {n: False for n in ("prefix_reuse", "layer_reuse", "skip_noop", "defer_head", "trim_final")}
    _, tensors, _ = _patched_run(model_dir, tmp_path / "again", "block_output", [0, 1])
    _, reference, _ = _patched_run(model_dir, tmp_path / "off", "block_output", [0, 1], off)
    assert tensors.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(tensors[key], reference[key], atol=2e-5, rtol=1e-5)


@pytest.mark.slow
def test_sparse_attention_caches_engage_every_shortcut(tmp_path: Path) -> None:
    report = _check(
        _build("deepseek_v32", tmp_path, index_topk=4), tmp_path, "block_output", "model.layers.{}"
    )
    assert all(v["on"] for v in report["shortcuts"].values()), report["shortcuts"]
    assert sum(g["cells_after_prefix"] for g in report["groups"]) > 0
    assert sum(g["cells_skipping_blocks"] for g in report["groups"]) > 0


# architecture → (config fields, component, hand-written module path, shortcuts expected off: why)
CASES: dict[str, tuple[dict[str, Any], str, str, dict[str, str]]] = {
    "minimax": ({"block_size": 4}, "block_output", "model.layers.{}", {}),
    "longcat_flash": ({}, "block_output", "model.layers.{}", {}),
    "deepseek_v4": (
        {"sliding_window": 4, "index_topk": 2},
        "attention_output",
        "model.layers.{}.self_attn",
        {"layer_reuse": "no single block_output per position"},
    ),
    "mistral": ({"sliding_window": 4}, "block_output", "model.layers.{}", {}),
    "openai-gpt": (
        {},
        "block_output",
        "transformer.h.{}",
        {"prefix_reuse": "openai-gpt returns no KV cache"},
    ),
    "rwkv": (
        {},
        "block_output",
        "rwkv.blocks.{}",
        {"prefix_reuse": "its forward with a cache failed", "trim_final": "results differ"},
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(CASES))
def test_patching_equals_hand_hooks_with_their_caches(arch: str, tmp_path: Path) -> None:
    """MiniMax (recurrent state beside the cache layers), LongCat-Flash (two cache layers per block),
    DeepSeek-V4 (compressed caches) and a sliding window shorter than the prompt: prefix reuse by
    recomputing the prefix; OpenAI GPT and a tiny RWKV: no cache, layer reuse all the same."""
    fields, component, module, off = CASES[arch]
    report = _check(_build(arch, tmp_path, **fields), tmp_path, component, module)
    state = report["shortcuts"]
    for name, value in state.items():
        if name in off:
            assert not value["on"] and off[name] in value["why"], (name, value)
        else:
            assert value["on"], (name, value)
    if "prefix_reuse" not in off:
        assert sum(g["cells_after_prefix"] for g in report["groups"]) > 0
    if "layer_reuse" not in off:
        assert sum(g["cells_skipping_blocks"] for g in report["groups"]) > 0
