"""ivx's batched patches equal hand-written hooks, on tiny models of several architectures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ivx.model import components, hooks
from ivx.model import loading as models
from ivx.recipes import run as experiment

ARCHS = ("gpt2", "gpt_neox", "llama", "qwen2", "opt", "gemma")
BASE = "When Mary and John went to the store , John gave a drink to"
SOURCE = "When Mary and John went to the store , Mary gave a drink to"

# Hand-written module paths of a decoder block, independent of ivx's component table.
BLOCKS = {
    "gpt2": "transformer.h.{}",
    "gpt_neox": "gpt_neox.layers.{}",
    "llama": "model.layers.{}",
    "qwen2": "model.layers.{}",
    "opt": "model.decoder.layers.{}",
    "gemma": "model.layers.{}",
}


def run_config(tmp_path: Path, model_dir: Path, body: dict) -> Path:
    data = {
        "name": "t",
        "model": {"name": str(model_dir)},
        "prompts": [{"base": BASE, "source": SOURCE, "target": " Mary", "foil": " John"}],
        "metrics": ["target_prob", "logit_diff"],
        "output": {"plots": False},
        **body,
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    return experiment.run(path, out_root=str(tmp_path / "runs"), progress=False)


def cell_logits(run_dir: Path) -> dict[int, torch.Tensor]:
    tensors = load_file(str(run_dir / "tensors.safetensors"))
    return {int(k[4:]): v for k, v in tensors.items() if k.startswith("cell")}


def plain_logits(
    lm: models.LoadedModel, text: str, hook_module: str | None = None, hook=None
) -> torch.Tensor:
    ids = torch.tensor([lm.tokenizer(text, add_special_tokens=False)["input_ids"]])
    handle = lm.model.get_submodule(hook_module).register_forward_hook(hook) if hook_module else None
    try:
        with torch.no_grad():
            return lm.model(ids).logits[0, -1].float()
    finally:
        if handle:
            handle.remove()


@pytest.mark.parametrize("arch", ARCHS)
def test_block_output_patch_equals_handwritten_hook(arch: str, tiny_model_dir, tmp_path: Path) -> None:
    model_dir = tiny_model_dir(arch)
    run_dir = run_config(
        tmp_path,
        model_dir,
        {
            "sweep": {"layer": "all", "position": [2, 9, -1]},
            "interventions": [
                {"kind": "vanilla", "component": "block_output", "layer": "$layer", "position": "$position"}
            ],
        },
    )
    lm = models.load(str(model_dir))
    got = cell_logits(run_dir)
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    block = BLOCKS[arch]
    for row in rows:
        layer, pos = row["layer"], row["position"]
        saved: dict[str, torch.Tensor] = {}

        def grab(mod, args, out):
            saved["h"] = (out[0] if isinstance(out, tuple) else out).clone()

        plain_logits(lm, SOURCE, block.format(layer), grab)

        def put(mod, args, out):
            h = (out[0] if isinstance(out, tuple) else out).clone()
            h[0, pos] = saved["h"][0, pos]
            return (h, *out[1:]) if isinstance(out, tuple) else h

        want = plain_logits(lm, BASE, block.format(layer), put)
        torch.testing.assert_close(got[row["cell"]], want, atol=1e-5, rtol=1e-5)
        assert row["target_prob"] == pytest.approx(
            float(torch.softmax(want, -1)[lm.tokenizer(" Mary", add_special_tokens=False)["input_ids"][0]]),
            abs=1e-5,
        )


def manual_patch(lm, site, layer_pos: int, head: int | None) -> torch.Tensor:
    """One row, one site: capture the source component, then overwrite it in the base run."""
    module = lm.model.get_submodule(site.module)

    def part(raw):  # the component slice as a [s, groups, w] view of raw (OPT's MLP sees [s, d])
        seq = raw[0] if raw.dim() == 3 else raw
        return seq.view(seq.shape[0], site.groups, site.width)[:, :, site.lo : site.hi]

    captured = {}

    def take(raw):
        captured["v"] = part(raw).clone()

    def give(raw):
        raw = raw.clone()
        view = part(raw)  # a view into the clone
        if head is None:
            view[layer_pos] = captured["v"][layer_pos]
        else:
            flat = view[layer_pos].reshape(site.n_heads, site.head_dim).clone()
            src = captured["v"][layer_pos].reshape(site.n_heads, site.head_dim)
            flat[head] = src[head]
            view[layer_pos] = flat.reshape(site.groups, site.hi - site.lo)
        return raw

    ids = {t: torch.tensor([lm.tokenizer(t, add_special_tokens=False)["input_ids"]]) for t in (BASE, SOURCE)}
    for text, fn in ((SOURCE, take), (BASE, give)):
        if site.hook == "output":

            def hook(mod, args, out, fn=fn):
                raw = out[0] if isinstance(out, tuple) else out
                new = fn(raw)
                if new is None:
                    return None
                return (new, *out[1:]) if isinstance(out, tuple) else new

            handle = module.register_forward_hook(hook)
        else:

            def hook(mod, args, kwargs, fn=fn):
                raw = args[0] if args else kwargs["hidden_states"]
                new = fn(raw)
                if new is None:
                    return None
                return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})

            handle = module.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            with torch.no_grad():
                logits = lm.model(ids[text]).logits[0, -1].float()
        finally:
            handle.remove()
    return logits


@pytest.mark.parametrize("arch", ARCHS)
def test_every_component_equals_manual_patch(arch: str, tiny_model_dir, tmp_path: Path) -> None:
    model_dir = tiny_model_dir(arch)
    lm = models.load(str(model_dir))
    # head_attention_pattern lives inside the attention function, not at a module hook: its own
    # hand-written oracle is tests/model/test_attention_pattern.py
    comps = [c for c in lm.info.components if c not in ("embedding", "head_attention_pattern")]
    layer, pos = 1, 9
    ivs = [{"kind": "vanilla", "component": "$component", "layer": layer, "position": pos}]
    sweep = {"component": comps}
    run_dir = run_config(tmp_path, model_dir, {"sweep": sweep, "interventions": ivs})
    got = cell_logits(run_dir)
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert {r["component"] for r in rows} == set(comps)
    for row in rows:
        site = components.resolve(lm.model, lm.info, row["component"], layer)
        want = manual_patch(lm, site, pos, None)
        torch.testing.assert_close(got[row["cell"]], want, atol=1e-5, rtol=1e-5, msg=row["component"])


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox"])
def test_head_patch_equals_manual_per_head_patch(arch: str, tiny_model_dir, tmp_path: Path) -> None:
    model_dir = tiny_model_dir(arch)
    lm = models.load(str(model_dir))
    # the pattern's oracle is tests/model/test_attention_pattern.py (it is not at a module hook)
    heads = [c for c in lm.info.components if c.startswith("head_") and c != "head_attention_pattern"]
    run_dir = run_config(
        tmp_path,
        model_dir,
        {
            "sweep": {"component": heads, "head": [0, 1]},
            "interventions": [
                {"kind": "vanilla", "component": "$component", "layer": 0, "position": 9, "head": "$head"}
            ],
        },
    )
    got = cell_logits(run_dir)
    for row in (json.loads(x) for x in (run_dir / "results.jsonl").read_text().splitlines()):
        site = components.resolve(lm.model, lm.info, row["component"], 0)
        want = manual_patch(lm, site, 9, row["head"])
        torch.testing.assert_close(got[row["cell"]], want, atol=1e-5, rtol=1e-5, msg=str(row))
        if row["component"] == "head_key_output" and arch == "llama":
            assert site.n_heads == lm.info.n_kv_heads < lm.info.n_heads  # grouped-query attention


@pytest.mark.parametrize("arch", ARCHS)
def test_self_patch_changes_nothing_and_full_last_block_gives_source(
    arch: str, tiny_model_dir, tmp_path: Path
) -> None:
    model_dir = tiny_model_dir(arch)
    lm = models.load(str(model_dir))
    comps = [c for c in lm.info.components if c != "embedding"]
    run_dir = run_config(
        tmp_path,
        model_dir,
        {
            "sweep": {"component": comps},
            "interventions": [
                {
                    "kind": "vanilla",
                    "component": "$component",
                    "layer": 0,
                    "position": "all",
                    "source": "base",
                }
            ],
        },
    )
    clean = plain_logits(lm, BASE)
    for logits in cell_logits(run_dir).values():
        torch.testing.assert_close(logits, clean, atol=1e-5, rtol=1e-5)
    last = lm.info.n_layers - 1
    run_dir = run_config(
        tmp_path,
        model_dir,
        {
            "interventions": [
                {"kind": "vanilla", "component": "block_output", "layer": last, "position": "all"}
            ]
        },
    )
    (logits,) = cell_logits(run_dir).values()
    torch.testing.assert_close(logits, plain_logits(lm, SOURCE), atol=1e-5, rtol=1e-5)


def test_batched_equals_one_cell_at_a_time(tiny_model_dir, tmp_path: Path) -> None:
    model_dir = tiny_model_dir("llama")
    body = {
        "sweep": {
            "component": ["block_output", "mlp_output", "head_attention_value_output"],
            "layer": "all",
            "position": "all",
        },
        "interventions": [
            {"kind": "vanilla", "component": "$component", "layer": "$layer", "position": "$position"}
        ],
    }
    batched = cell_logits(run_config(tmp_path, model_dir, body))
    single = cell_logits(run_config(tmp_path, model_dir, {**body, "batch": {"size": 1}}))
    assert batched.keys() == single.keys() and len(batched) > 50
    for key in batched:
        torch.testing.assert_close(batched[key], single[key], atol=1e-6, rtol=1e-6)


def test_hooks_removed_after_error_and_foreign_hooks_untouched(tiny_model_dir) -> None:
    lm = models.load(str(tiny_model_dir("gpt2")))
    site = components.resolve(lm.model, lm.info, "block_output", 0)
    module = lm.model.get_submodule(site.module)
    calls = []
    foreign = module.register_forward_hook(lambda m, a, o: calls.append(1))

    def boom(base, source):
        raise RuntimeError("boom")

    patch = hooks.Patch(site=site, rows=torch.tensor([0]), positions=torch.tensor([0]), fn=boom)
    with pytest.raises(RuntimeError, match="boom"):
        with hooks.patching(lm.model, [patch]):
            lm.model(torch.tensor([[1, 2, 3]]))
    assert len(module._forward_hooks) == 1  # only the foreign hook is left
    with hooks.capturing(lm.model, [site]) as store:
        with torch.no_grad():
            out = lm.model(torch.tensor([[1, 2, 3]])).logits
    assert len(module._forward_hooks) == 1
    foreign.remove()
    with torch.no_grad():
        torch.testing.assert_close(out, lm.model(torch.tensor([[1, 2, 3]])).logits)  # capture changes nothing
    assert store[site].shape == (1, 3, lm.info.d_model) and calls


@pytest.mark.parametrize("component", ["block_output", "mlp_output", "attention_output"])
def test_matches_pyvene_when_installed(component: str, tiny_model_dir, tmp_path: Path) -> None:
    pv = pytest.importorskip("pyvene", reason="pyvene is an optional oracle (pip install pyvene)")
    model_dir = tiny_model_dir("gpt2")
    run_dir = run_config(
        tmp_path,
        model_dir,
        {
            "sweep": {"position": [3, 9]},
            "interventions": [
                {"kind": "vanilla", "component": component, "layer": 1, "position": "$position"}
            ],
        },
    )
    got = cell_logits(run_dir)
    lm = models.load(str(model_dir))
    ids = {t: torch.tensor([lm.tokenizer(t, add_special_tokens=False)["input_ids"]]) for t in (BASE, SOURCE)}
    config = pv.IntervenableConfig(
        [{"layer": 1, "component": component, "intervention_type": pv.VanillaIntervention}]
    )
    wrapped = pv.IntervenableModel(config, lm.model)
    for row in (json.loads(x) for x in (run_dir / "results.jsonl").read_text().splitlines()):
        with torch.no_grad():
            _, out = wrapped(
                {"input_ids": ids[BASE]}, [{"input_ids": ids[SOURCE]}], {"sources->base": row["position"]}
            )
        torch.testing.assert_close(got[row["cell"]], out.logits[0, -1].float(), atol=1e-5, rtol=1e-5)
