"""Causal tracing for one fact equals a hand-written ROME implementation with the same noise draws."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from ivx.core import interventions
from ivx.model import loading as models
from ivx.recipes import run as experiment

PROMPT = "The Space Needle is in downtown"
SUBJECT = "The Space Needle"
MODULES = {
    "gpt2": {
        "emb": "transformer.wte",
        "block_output": "transformer.h.{}",
        "mlp_output": "transformer.h.{}.mlp",
        "attention_output": "transformer.h.{}.attn",
    },
    "llama": {
        "emb": "model.embed_tokens",
        "block_output": "model.layers.{}",
        "mlp_output": "model.layers.{}.mlp",
        "attention_output": "model.layers.{}.self_attn",
    },
}


def _out(o):
    return o[0] if isinstance(o, tuple) else o


def _replace(o, new):
    return (new, *o[1:]) if isinstance(o, tuple) else new


def hand_trace(lm, names, comp, layer, pos, window, noise, subj, target):
    """ROME's trace_with_patch, written out: noise the subject embeddings, restore clean states."""
    model = lm.model
    ids = torch.tensor([lm.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]])
    n_layers = lm.info.n_layers
    layers = (
        [layer]
        if window is None
        else list(range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2))))
    )
    clean: dict[int, torch.Tensor] = {}
    handles = [
        model.get_submodule(names[comp].format(l)).register_forward_hook(
            lambda m, a, o, l=l: clean.__setitem__(l, _out(o).clone())
        )
        for l in layers
    ]
    with torch.no_grad():
        p_clean = torch.softmax(model(ids).logits[0, -1], -1)[target].item()
    for h in handles:
        h.remove()
    probs_restored, probs_corrupt = [], []
    for draw in noise:

        def add_noise(m, a, o, draw=draw):
            o = o.clone()
            o[0, subj[0] : subj[1]] += draw
            return o

        handles = [model.get_submodule(names["emb"]).register_forward_hook(add_noise)]
        with torch.no_grad():
            probs_corrupt.append(torch.softmax(model(ids).logits[0, -1], -1)[target].item())
        for l in layers:

            def restore(m, a, o, l=l):
                h = _out(o).clone()
                h[0, pos] = clean[l][0, pos]
                return _replace(o, h)

            handles.append(model.get_submodule(names[comp].format(l)).register_forward_hook(restore))
        with torch.no_grad():
            probs_restored.append(torch.softmax(model(ids).logits[0, -1], -1)[target].item())
        for h in handles:
            h.remove()
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return mean(probs_restored) - mean(probs_corrupt), p_clean, mean(probs_corrupt)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_trace_equals_hand_written_rome(arch: str, tmp_path: Path) -> None:
    from tests.tiny import build

    model_dir = build(arch, tmp_path / arch, n_layers=4)
    cfg = {
        "name": "trace",
        "model": {"name": str(model_dir)},
        "seed": 3,
        "prompts": [{"base": PROMPT, "subject": SUBJECT, "target": " Seattle"}],
        "corrupt": {"kind": "noise", "positions": "subject", "scale": 3.0, "samples": 4},
        "sweep": {
            "component": ["block_output", "mlp_output", "attention_output"],
            "layer": "all",
            "position": "all",
        },
        "interventions": [
            {
                "kind": "vanilla",
                "component": "$component",
                "layer": "$layer",
                "position": "$position",
                "window": {"mlp_output": 3, "attention_output": 3},
            }
        ],
        "metrics": ["indirect_effect", "target_prob"],
        "output": {"plots": False, "logits": "none"},
    }
    path = tmp_path / "trace.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_dir = experiment.run(path, out_root=str(tmp_path / "runs"), progress=False)
    rows = [json.loads(x) for x in (run_dir / "results.jsonl").read_text().splitlines()]
    lm = models.load(str(model_dir))
    enc = lm.tokenizer(PROMPT, add_special_tokens=False, return_offsets_mapping=True)
    subj = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if a < len(SUBJECT)]
    subj = (subj[0], subj[-1] + 1)
    weight = lm.model.get_input_embeddings().weight.detach()
    sigma = float(weight[enc["input_ids"][subj[0] : subj[1]]].std())
    noise = [interventions.noise(3, 0, s, subj[1] - subj[0], lm.info.d_model, 3.0 * sigma) for s in range(4)]
    target = lm.tokenizer(" Seattle", add_special_tokens=False)["input_ids"][0]
    checked = 0
    for row in rows:
        window = None if row["component"] == "block_output" else 3
        if row["position"] not in (0, subj[1] - 1, len(enc["input_ids"]) - 1):
            continue
        ie, p_clean, p_corrupt = hand_trace(
            lm, MODULES[arch], row["component"], row["layer"], row["position"], window, noise, subj, target
        )
        assert row["indirect_effect"] == pytest.approx(ie, abs=1e-5), row
        assert row["p_clean"] == pytest.approx(p_clean, abs=1e-5)
        assert row["p_corrupted"] == pytest.approx(p_corrupt, abs=1e-5)
        checked += 1
    assert checked == 3 * 4 * 3  # 3 components × 4 layers (window edges at 0 and 3) × 3 positions


def test_severed_mlp_path_equals_hand_written(tmp_path: Path) -> None:
    """Restore the hidden state at (0, p) while later MLPs stay at their corrupted values."""
    from tests.tiny import build

    model_dir = build("gpt2", tmp_path / "gpt2", n_layers=3)
    cfg = {
        "name": "sever",
        "model": {"name": str(model_dir)},
        "seed": 1,
        "prompts": [{"base": PROMPT, "subject": SUBJECT, "target": " Seattle"}],
        "corrupt": {"samples": 3},
        "sweep": {"position": "all"},
        "interventions": [
            {
                "kind": "vanilla",
                "component": "block_output",
                "layer": 0,
                "position": "$position",
                "sever": "mlp_output",
            }
        ],
        "metrics": ["indirect_effect"],
        "output": {"plots": False, "logits": "none"},
    }
    path = tmp_path / "sever.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rows = [
        json.loads(x)
        for x in (experiment.run(path, out_root=str(tmp_path / "r"), progress=False) / "results.jsonl")
        .read_text()
        .splitlines()
    ]
    lm = models.load(str(model_dir))
    model = lm.model
    ids = torch.tensor([lm.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]])
    subj = (0, 3)  # "The Space Needle"
    sigma = float(model.transformer.wte.weight.detach()[ids[0, :3]].std())
    target = lm.tokenizer(" Seattle", add_special_tokens=False)["input_ids"][0]
    clean = {}
    h = model.transformer.h[0].register_forward_hook(lambda m, a, o: clean.__setitem__(0, o.clone()))
    with torch.no_grad():
        model(ids)
    h.remove()
    for row in rows:
        pos = row["position"]
        restored, corrupted = [], []
        for s in range(3):
            draw = interventions.noise(1, 0, s, 3, lm.info.d_model, 3.0 * sigma)
            noise = model.transformer.wte.register_forward_hook(
                lambda m, a, o, draw=draw: (
                    o + torch.nn.functional.pad(draw, (0, 0, subj[0], o.shape[1] - subj[1]))[None]
                )
            )
            frozen = {}
            hs = [
                model.transformer.h[L].mlp.register_forward_hook(
                    lambda m, a, o, L=L: frozen.__setitem__(L, o.clone())
                )
                for L in (1, 2)
            ]
            with torch.no_grad():
                corrupted.append(torch.softmax(model(ids).logits[0, -1], -1)[target].item())
            for x in hs:
                x.remove()

            def restore(m, a, o):
                o = o.clone()
                o[0, pos] = clean[0][0, pos]
                return o

            hs = [model.transformer.h[0].register_forward_hook(restore)]
            hs += [
                model.transformer.h[L].mlp.register_forward_hook(lambda m, a, o, L=L: frozen[L])
                for L in (1, 2)
            ]
            with torch.no_grad():
                restored.append(torch.softmax(model(ids).logits[0, -1], -1)[target].item())
            for x in hs + [noise]:
                x.remove()
        assert row["indirect_effect"] == pytest.approx(sum(restored) / 3 - sum(corrupted) / 3, abs=1e-5)
