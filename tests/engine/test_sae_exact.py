"""SAE feature edits against hand-written hooks: no-op exactness, each kind's change, drop, collect.

The hand side reads the SAE's tensors straight from sae_weights.safetensors and writes the
published formulas itself (never ivx's SAE code), then edits the block's output in a forward hook.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ivx.model import loading as models
from ivx.model import sae as saes
from ivx.recipes import run as experiment
from tests.engine.test_patching_oracles import plain_logits

BASE = "When Mary and John went to the store , John gave a drink to"
SOURCE = "When Mary and John went to the store , Mary gave a drink to"
LAYER, POS, FEATS = 0, [3, -1], [2, 5, 11]
BLOCKS = {"gpt2": "transformer.h.{}", "gpt_neox": "gpt_neox.layers.{}", "llama": "model.layers.{}"}
# one architecture (and normalisation) of SAE per model, so each formula runs through the engine
SAES = {
    "gpt2": ("standard", "none"),
    "llama": ("jumprelu", "constant_norm_rescale"),
    "gpt_neox": ("topk", "none"),
}
POINTS = [  # name, kind, value, coefficient, sae_error, feature
    ("noop", "scale", 1.0, 1.0, "keep", "all"),
    ("zero", "zero", None, 1.0, "keep", FEATS),
    ("set", "set", 2.5, 1.0, "keep", FEATS),
    ("scale", "scale", 3.0, 1.0, "keep", FEATS),
    ("add", "addition", None, 1.5, "keep", FEATS),
    ("vanilla", "vanilla", None, 1.0, "keep", FEATS),
    ("drop", "scale", 1.0, 1.0, "drop", "all"),
    ("collect", "collect", None, 1.0, "keep", FEATS),
]


class Hand:
    """The SAE's formulas written out from its safetensors file."""

    def __init__(self, directory: Path, arch: str, norm: str, k: int | None) -> None:
        self.t = load_file(str(directory / "sae_weights.safetensors"))
        self.arch, self.norm, self.k = arch, norm, k

    def coeff(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm == "constant_norm_rescale":
            return x.shape[-1] ** 0.5 / x.norm(dim=-1, keepdim=True)
        return torch.ones(*x.shape[:-1], 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        t = self.t
        pre = (x * self.coeff(x) - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
        if self.arch == "standard":
            return torch.clamp(pre, min=0)
        if self.arch == "jumprelu":
            return torch.where(pre > t["threshold"], torch.clamp(pre, min=0), torch.zeros_like(pre))
        top = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, top.values.clamp(min=0))

    def decode(self, f: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (f @ self.t["W_dec"] + self.t["b_dec"]) / self.coeff(x)

    def change(self, f_new: torch.Tensor, f: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return ((f_new - f) @ self.t["W_dec"]) / self.coeff(x)


def _run(tmp_path: Path, model_dir: Path, sae_dir: Path) -> Path:
    points = [
        {"name": n, "k": k, "v": v if v is not None else 0.0, "c": c, "e": e, "f": f}
        for n, k, v, c, e, f in POINTS
    ]
    data = {
        "name": "sae",
        "model": {"name": str(model_dir)},
        "prompts": [{"base": BASE, "source": SOURCE, "target": " Mary", "foil": " John"}],
        "saes": [{"name": "mine", "path": str(sae_dir)}],
        "sweep": {"points": points},
        "interventions": [
            {
                "kind": "$k",
                "name": "feat",
                "sae": "mine",
                "feature": "$f",
                "value": "$v",
                "coefficient": "$c",
                "sae_error": "$e",
                "position": POS,
                "source": "source",
            }
        ],
        "metrics": ["target_prob"],
        "output": {"plots": False},
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    return experiment.run(path, out_root=str(tmp_path / "runs"), progress=False)


def _logits(lm, block: str, hook=None, text: str = BASE) -> torch.Tensor:
    return plain_logits(lm, text, block if hook else None, hook)


def _edited(lm, block: str, pos: list[int], new_of) -> torch.Tensor:
    def put(mod, args, out):
        h = (out[0] if isinstance(out, tuple) else out).clone()
        h[0, pos] = new_of(h[0, pos])
        return (h, *out[1:]) if isinstance(out, tuple) else h

    return _logits(lm, block, put)


def _check_arch(arch: str, tiny_model_dir, tmp_path: Path) -> None:
    model_dir = tiny_model_dir(arch)
    kind, norm = SAES[arch]
    k = 24 if kind == "topk" else None
    sae = saes.random_sae(
        kind,
        d_in=32,
        d_sae=48,
        hook_name=f"blocks.{LAYER}.hook_resid_post",
        seed=7,
        k=k,
        normalize_activations=norm,
        scale=0.4,
    )
    sae_dir = saes.save(sae, tmp_path / "sae")
    hand = Hand(sae_dir, kind, norm, k)
    run_dir = _run(tmp_path, model_dir, sae_dir)
    lm = models.load(str(model_dir))
    block = BLOCKS[arch].format(LAYER)
    got = load_file(str(run_dir / "tensors.safetensors"))
    rows = {
        json.loads(line)["point"]: json.loads(line)
        for line in (run_dir / "results.jsonl").read_text().splitlines()
    }
    n = len(lm.tokenizer(BASE, add_special_tokens=False)["input_ids"])
    pos = [p % n for p in POS]
    src: dict[str, torch.Tensor] = {}
    _logits(
        lm, block, lambda m, a, o: src.__setitem__("h", (o[0] if isinstance(o, tuple) else o).clone()), SOURCE
    )
    x_src = src["h"][0, pos]
    clean = _logits(lm, block)
    assert sae.site() == ("block_output", LAYER)

    def edit_with(target):
        def new_of(x):
            f = hand.encode(x)
            f_new = f.clone()
            f_new[:, FEATS] = target(f, x)[:, FEATS]
            return x + hand.change(f_new, f, x)

        return new_of

    expected = {
        "zero": edit_with(lambda f, x: torch.zeros_like(f)),
        "set": edit_with(lambda f, x: torch.full_like(f, 2.5)),
        "scale": edit_with(lambda f, x: f * 3.0),
        "add": edit_with(lambda f, x: f + 1.5),
        "vanilla": edit_with(lambda f, x: hand.encode(x_src)),
        "drop": lambda x: hand.decode(hand.encode(x), x),
    }
    cell = lambda name: got[f"cell{rows[name]['cell']}"]  # noqa: E731
    # editing nothing: the error term is added back, so the run equals the unhooked model
    torch.testing.assert_close(cell("noop"), clean, atol=1e-6, rtol=0)
    torch.testing.assert_close(cell("collect"), clean, atol=1e-6, rtol=0)
    for name, new_of in expected.items():
        want = _edited(lm, block, pos, new_of)
        torch.testing.assert_close(cell(name), want, atol=1e-5, rtol=1e-5, msg=f"{arch} {name}")
        assert (cell(name) - clean).abs().max() > 1e-4, f"{name} must change something"
    # collect: the features of the block output, from output_hidden_states (block 0's output)
    ids = torch.tensor([lm.tokenizer(BASE, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        hidden = lm.model(ids, output_hidden_states=True).hidden_states[LAYER + 1][0]
    collected = got[f"feat.cell{rows['collect']['cell']}.layer{LAYER}"]
    torch.testing.assert_close(collected, hand.encode(hidden[pos])[:, FEATS], atol=1e-5, rtol=1e-5)
    # summary.json's report: reconstruction quality over the prompt's tokens, by hand
    (entry,) = json.loads((run_dir / "summary.json").read_text())["saes"]
    f = hand.encode(hidden)
    err = hidden - hand.decode(f, hidden)
    assert entry["tokens"] == n and (entry["component"], entry["layer"]) == ("block_output", LAYER)
    assert entry["mse"] == pytest.approx(float((err**2).mean()), rel=1e-4)
    fve = 1 - float((err**2).sum() / ((hidden - hidden.mean(0)) ** 2).sum())
    assert entry["fve"] == pytest.approx(fve, rel=1e-4, abs=1e-6)
    assert entry["l0"] == pytest.approx(float((f != 0).sum(-1).float().mean()), rel=1e-6)
    assert entry["dead"] == int((f == 0).all(0).sum())
    warned = any(
        "say little" in w for w in json.loads((run_dir / "summary.json").read_text()).get("warnings", [])
    )
    assert warned == (fve < 0.5)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gpt_neox"])
def test_sae_edits_match_hand_hooks(arch: str, tiny_model_dir, tmp_path: Path) -> None:
    _check_arch(arch, tiny_model_dir, tmp_path)


def test_feature_sweep_shares_one_patch_and_matches_each_hand_hook(tiny_model_dir, tmp_path: Path) -> None:
    model_dir = tiny_model_dir("gpt2")
    sae = saes.random_sae(
        "standard", d_in=32, d_sae=48, hook_name="blocks.0.hook_resid_post", seed=3, scale=0.4
    )
    sae_dir = saes.save(sae, tmp_path / "sae")
    hand = Hand(sae_dir, "standard", "none", None)
    data = {
        "name": "sweep",
        "model": {"name": str(model_dir)},
        "prompts": [{"base": BASE, "source": SOURCE, "target": " Mary"}],
        "sweep": {"f": [[1], [4], [7, 30]]},
        "interventions": [
            {"kind": "vanilla", "sae": str(sae_dir), "feature": "$f", "position": POS, "source": "source"}
        ],
        "output": {"plots": False},
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    run_dir = experiment.run(tmp_path / "s.yaml", out_root=str(tmp_path / "runs"), progress=False)
    lm = models.load(str(model_dir))
    block = BLOCKS["gpt2"].format(LAYER)
    src: dict[str, torch.Tensor] = {}
    _logits(
        lm, block, lambda m, a, o: src.__setitem__("h", (o[0] if isinstance(o, tuple) else o).clone()), SOURCE
    )
    n = len(lm.tokenizer(BASE, add_special_tokens=False)["input_ids"])
    pos = [p % n for p in POS]
    got = load_file(str(run_dir / "tensors.safetensors"))
    for line in (run_dir / "results.jsonl").read_text().splitlines():
        row = json.loads(line)
        feats = row["f"] if isinstance(row["f"], list) else [row["f"]]

        def new_of(x, feats=feats):
            f = hand.encode(x)
            f_new = f.clone()
            f_new[:, feats] = hand.encode(src["h"][0, pos])[:, feats]
            return x + hand.change(f_new, f, x)

        torch.testing.assert_close(
            got[f"cell{row['cell']}"], _edited(lm, block, pos, new_of), atol=1e-5, rtol=1e-5
        )


def test_hook_z_sae_reads_every_head_of_the_attention_output_input(tiny_model_dir, tmp_path: Path) -> None:
    """An SAE on attn.hook_z sees all heads' values at once: the input of the attention's c_proj."""
    model_dir = tiny_model_dir("gpt2")
    sae = saes.random_sae("standard", d_in=32, d_sae=16, hook_name="blocks.1.attn.hook_z", seed=5)
    sae_dir = saes.save(sae, tmp_path / "z")
    data = {
        "name": "z",
        "model": {"name": str(model_dir)},
        "prompts": [{"base": BASE, "target": " Mary"}],
        "interventions": [
            {"kind": "collect", "name": "z", "sae": str(sae_dir), "feature": [0, 3, 9], "position": POS}
        ],
        "output": {"plots": False},
    }
    (tmp_path / "z.yaml").write_text(yaml.safe_dump(data))
    run_dir = experiment.run(tmp_path / "z.yaml", out_root=str(tmp_path / "runs"), progress=False)
    lm = models.load(str(model_dir))
    seen: dict[str, torch.Tensor] = {}
    proj = lm.model.get_submodule("transformer.h.1.attn.c_proj")
    handle = proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("z", a[0].clone()))
    clean = _logits(lm, BLOCKS["gpt2"].format(1))
    handle.remove()
    n = seen["z"].shape[1]
    hand = Hand(sae_dir, "standard", "none", None)
    got = load_file(str(run_dir / "tensors.safetensors"))
    torch.testing.assert_close(
        got["z.cell0.layer1"], hand.encode(seen["z"][0, [p % n for p in POS]])[:, [0, 3, 9]]
    )
    torch.testing.assert_close(got["cell0"], clean, atol=1e-6, rtol=0)
