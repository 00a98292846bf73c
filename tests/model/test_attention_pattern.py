"""`head_attention_pattern`: collected patterns equal transformers' own eager attentions, and every
patch of a pattern equals a hand-written hook that recomputes the head's output from the new
pattern and the head's own values (GQA: a query head reads its key/value head's values)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ivx.model import loading as models
from tests.engine.test_ablations import OFF
from tests.engine.test_ablations import run as run_config

PROMPTS = [
    "When Mary and John went to the store , John gave a drink to",
    "When John and Mary went to the store , Mary gave a drink to",
    "When Mary and John went to the park , Mary gave a drink to",
]
SLOW = pytest.mark.slow
# gpt2 and llama (grouped-query attention) in the fast tier, the rest in the slow one
ARCHS = ["gpt2", "llama", pytest.param("gpt_neox", marks=SLOW)]
CASES = [
    ("gpt2", "on"),
    ("gpt2", "off"),
    ("llama", "on"),
    pytest.param("llama", "off", marks=SLOW),
    pytest.param("gpt_neox", "on", marks=SLOW),
    pytest.param("gpt_neox", "off", marks=SLOW),
]
LAYER, HEADS, QUERIES = 1, [1, 3], [2, -1]
# hand-written paths: where each architecture computes its values, and its output projection
VALUES = {
    "gpt2": "transformer.h.{}.attn.c_attn",
    "llama": "model.layers.{}.self_attn.v_proj",
    "gpt_neox": "gpt_neox.layers.{}.attention.query_key_value",
}
O_PROJ = {
    "gpt2": "transformer.h.{}.attn.c_proj",
    "llama": "model.layers.{}.self_attn.o_proj",
    "gpt_neox": "gpt_neox.layers.{}.attention.dense",
}


def run(tmp_path: Path, model_dir: Path, iv: dict, batch: dict, name: str, **extra) -> Path:
    """`ivx run` of one intervention on PROMPTS, each with the next prompt as its source."""
    prompts = [{"base": p, "source": PROMPTS[(i + 1) % 3], "target": " Mary"} for i, p in enumerate(PROMPTS)]
    return run_config(tmp_path, model_dir, [iv], batch, name, prompts=prompts, seed=1, **extra)


def eager_patterns(lm: models.LoadedModel, text: str) -> list[torch.Tensor]:
    """transformers' eager attention probabilities of every layer: [heads, q, k] each."""
    ids = torch.tensor([lm.tokenizer(text, add_special_tokens=False)["input_ids"]])
    loaded = lm.model.config._attn_implementation
    lm.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            return [a[0] for a in lm.model(ids, output_attentions=True).attentions]
    finally:
        lm.model.set_attn_implementation(loaded)


def head_values(lm: models.LoadedModel, arch: str, text: str) -> torch.Tensor:
    """Each query head's value vectors at LAYER: [heads, k, hd] (GQA: repeated from its kv head)."""
    cfg = lm.model.config
    nh = cfg.num_attention_heads
    hd = cfg.hidden_size // nh
    store = {}
    module = lm.model.get_submodule(VALUES[arch].format(LAYER))
    handle = module.register_forward_hook(lambda m, a, o: store.__setitem__("o", o[0].clone()))
    with torch.no_grad():
        lm.model(torch.tensor([lm.tokenizer(text, add_special_tokens=False)["input_ids"]]))
    handle.remove()
    out, seq = store["o"], store["o"].shape[0]
    if arch == "gpt2":
        return out[:, 2 * cfg.hidden_size :].view(seq, nh, hd).transpose(0, 1)
    if arch == "gpt_neox":
        return out.view(seq, nh, 3 * hd)[..., 2 * hd :].transpose(0, 1)
    kv = out.view(seq, cfg.num_key_value_heads, hd).transpose(0, 1)  # [kv_heads, k, hd]
    return kv.repeat_interleave(nh // cfg.num_key_value_heads, dim=0)


def hand(lm: models.LoadedModel, arch: str, p: int, new: dict[int, torch.Tensor]) -> torch.Tensor:
    """Logits of prompt p with head h's output at QUERIES recomputed from pattern rows new[h] [q, k]."""
    text = PROMPTS[p]
    values = head_values(lm, arch, text)
    hd = values.shape[-1]
    ids = torch.tensor([lm.tokenizer(text, add_special_tokens=False)["input_ids"]])
    queries = [q % ids.shape[1] for q in QUERIES]

    def pre(m, args):  # noqa: ANN001, ANN202
        x = args[0].clone()
        for h, rows in new.items():
            x[0, queries, h * hd : (h + 1) * hd] = rows @ values[h]
        return (x, *args[1:])

    handle = lm.model.get_submodule(O_PROJ[arch].format(LAYER)).register_forward_pre_hook(pre)
    try:
        with torch.no_grad():
            return lm.model(ids).logits[0, -1].float()
    finally:
        handle.remove()


@pytest.mark.parametrize("arch", ARCHS)
def test_collected_pattern_equals_eager_attentions(arch: str, tiny_model_dir, tmp_path: Path) -> None:
    """`collect` records [positions, heads × keys]; capture never changes the logits."""
    model_dir = tiny_model_dir(arch)
    iv = {"kind": "collect", "name": "pat", "component": "head_attention_pattern", "layer": "all"}
    run_dir = run(tmp_path, model_dir, iv, {}, "collect")
    tensors = load_file(str(run_dir / "tensors.safetensors"))
    lm = models.load(str(model_dir))
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    for row in rows:
        want = eager_patterns(lm, PROMPTS[row["prompt_index"]])
        for layer, pattern in enumerate(want):
            got = tensors[f"pat.cell{row['cell']}.layer{layer}"]  # [q, heads * k]
            torch.testing.assert_close(got, pattern.transpose(0, 1).reshape(got.shape), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(
            tensors[f"cell{row['cell']}"], hand(lm, arch, row["prompt_index"], {}), atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize(("arch", "shortcuts"), CASES)
def test_pattern_patches_equal_hand_recomputed_heads(
    arch: str, shortcuts: str, tiny_model_dir, tmp_path: Path
) -> None:
    """vanilla (source run), zero, scale, mean and resample of heads 1 and 3's rows at two queries."""
    model_dir = tiny_model_dir(arch)
    iv = {
        "kind": "$kind",
        "component": "head_attention_pattern",
        "layer": LAYER,
        "head": HEADS,
        "position": QUERIES,
        "value": 0.5,
    }
    sweep = {"kind": ["vanilla", "zero", "scale", "mean", "resample"]}
    run_dir = run(tmp_path, model_dir, iv, OFF if shortcuts == "off" else {}, "patch", sweep=sweep)
    lm = models.load(str(model_dir))
    n = len(lm.tokenizer(PROMPTS[0], add_special_tokens=False)["input_ids"])
    queries = [q % n for q in QUERIES]
    patterns = [eager_patterns(lm, t)[LAYER][:, queries] for t in PROMPTS]  # [heads, 2, k] each
    mean = torch.stack(patterns).mean(0)
    drawn = json.loads((run_dir / "manifest.json").read_text())["shortcuts"]["ablations"]["iv0"]["resample"]
    tensors = load_file(str(run_dir / "tensors.safetensors"))
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 15
    report = json.loads((run_dir / "manifest.json").read_text())["shortcuts"]
    group = report["groups"][0]
    engaged = group["cells_after_prefix"] > 0 and group["cells_skipping_blocks"] > 0
    assert engaged == (shortcuts == "on")  # prefix and layer reuse really ran (or really did not)
    for row in rows:
        p, kind = row["prompt_index"], row["kind"]
        new = {
            "vanilla": patterns[(p + 1) % 3],
            "zero": torch.zeros_like(mean),
            "scale": 0.5 * patterns[p],
            "mean": mean,
            "resample": patterns[drawn[str(p)]] if kind == "resample" else None,
        }[kind]
        assert new is not None
        want = hand(lm, arch, p, {h: new[h] for h in HEADS})
        torch.testing.assert_close(tensors[f"cell{row['cell']}"], want, atol=1e-5, rtol=1e-5, msg=str(row))


@pytest.mark.parametrize(
    "arch",
    ["qwen2", "opt", "gemma", *(pytest.param(a, marks=SLOW) for a in ("mistral", "phi3", "gptj", "olmo"))],
)
def test_capture_equals_eager_attentions_on_other_layouts(arch: str, tiny_model_dir) -> None:
    """Every layout row's attention hands ivx the probabilities transformers' eager path returns."""
    from ivx.model import components, hooks

    lm = models.load(str(tiny_model_dir(arch)))
    ids = torch.tensor([lm.tokenizer(PROMPTS[0], add_special_tokens=False)["input_ids"]])
    if "head_attention_pattern" not in lm.info.components:  # an older port (gptj before 5.24)
        with pytest.raises(components.ComponentError, match="head_attention_pattern"):
            components.resolve(lm.model, lm.info, "head_attention_pattern", 1)
        return
    site = components.resolve(lm.model, lm.info, "head_attention_pattern", 1)
    with torch.no_grad(), hooks.capturing(lm.model, [site]) as store:
        logits = lm.model(ids).logits
    want = eager_patterns(lm, PROMPTS[0])[1]  # [heads, q, k]
    torch.testing.assert_close(
        store[site][0], want.transpose(0, 1).reshape(ids.shape[1], -1), atol=1e-6, rtol=1e-5
    )
    with torch.no_grad():
        torch.testing.assert_close(
            logits, lm.model(ids).logits, atol=1e-5, rtol=1e-5
        )  # reading changes nothing


def test_attention_outside_the_interface_is_refused(tiny_model_dir, monkeypatch) -> None:
    """An attention module that never calls transformers' interface: no pattern component is
    listed, and a pattern site forced onto it fails with a message instead of reading nothing."""
    from ivx.model import components, hooks, patterns

    lm = models.load(str(tiny_model_dir("gpt2")))
    assert "head_attention_pattern" in lm.info.components
    monkeypatch.setattr(patterns, "supported", lambda attention: False)
    assert "head_attention_pattern" not in components.describe(lm.model).components
    site = components.resolve(lm.model, lm.info, "head_attention_pattern", 1)
    attention = lm.model.get_submodule(site.module)

    def own_attention(hidden_states, *args, **kwargs):  # its own arithmetic, no interface
        return torch.zeros_like(hidden_states), None

    monkeypatch.setattr(attention, "forward", own_attention)
    ids = torch.tensor([lm.tokenizer(PROMPTS[0], add_special_tokens=False)["input_ids"]])
    with pytest.raises(patterns.PatternError, match=r"transformer\.h\.1\.attn .*outside"):
        with torch.no_grad(), hooks.capturing(lm.model, [site]):
            lm.model(ids)
    assert not patterns._ACTIVE and not patterns._FIRED  # nothing left behind
