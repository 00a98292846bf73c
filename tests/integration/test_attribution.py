"""Attribution patching against exact patching and independent first-order computations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from ivx import experiment, models, verification
from ivx.cli import app

ROOT = Path(__file__).resolve().parents[2]
RECORDS = [
    {"base": "When Mary and John went to the store , John gave a drink to", "target": " Mary", "foil": " John",
     "source": "When Mary and John went to the store , Mary gave a drink to"},
    {"base": "When Tom and James went to the park , James gave a ball to", "target": " Tom", "foil": " James",
     "source": "When Tom and James went to the park , Tom gave a ball to"},
]


def run_rows(lm, tmp: Path, method: str, **fields) -> list[dict]:
    """Run a config on an already loaded model; return results.jsonl rows ordered by cell."""
    cfg = {
        "name": method,
        "model": {"name": str(lm.path)},
        "prompts": RECORDS,
        "method": method,
        "output": {"root": str(tmp), "logits": "none", "plots": False},
        **fields,
    }
    path = tmp / f"{method}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_dir = experiment.run(path, progress=False, lm=lm)
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    return sorted(rows, key=lambda r: r["cell"])


def without_final_norm(lm) -> None:
    """Make the logits linear in the last residual stream: the final norm becomes the identity."""
    base = lm.model.base_model
    name = "ln_f" if hasattr(base, "ln_f") else "norm"
    setattr(base, name, torch.nn.Identity())


PATCH = {
    "sweep": {"component": ["block_output", "mlp_output", "mlp_activation"], "position": "all"},
    "interventions": [{"kind": "vanilla", "component": "$component", "layer": -1, "position": "$position"}],
    "metrics": ["target_logit", "logit_diff", "logit_diff_norm"],
}


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_linear_readout_is_exact(arch: str, tiny_model_dir, tmp_path: Path) -> None:
    """Without a final norm, logits are linear in the last block's output, MLP output and MLP
    activation: there the attribution estimate must equal exact patching."""
    lm = models.load(str(tiny_model_dir(arch)))
    without_final_norm(lm)
    exact = run_rows(lm, tmp_path, "exact", **PATCH)
    approx = run_rows(lm, tmp_path, "attribution", **PATCH)
    assert len(exact) == len(approx) == 2 * 3 * len(exact) // 6
    moved = 0
    for e, a in zip(exact, approx, strict=True):
        assert a["approximate"] is True and "approximate" not in e
        assert set(a) - {"approximate"} == set(e)
        for key in ("target_logit", "logit_diff"):
            assert a[key] == pytest.approx(e[key], abs=1e-5), (e, a)
        if e["logit_diff_norm"] is not None:
            assert a["logit_diff_norm"] == pytest.approx(e["logit_diff_norm"], abs=1e-4)
        moved += abs(e["logit_diff"] - exact[0]["logit_diff"]) > 1e-3
    assert moved > 4  # the patches change the answer: the agreement is not trivial


def first_order(lm, module: str, ids: list[int], src_ids: list[int], pos: int, cols: slice, target: int) -> float:
    """d/dε of the target logit when a slice of `module`'s output moves ε of the way to the
    source run's value, by forward-mode AD (torch.func.jvp) through a hand-written hook."""
    mod = lm.model.get_submodule(module)
    seen = {}
    handle = mod.register_forward_hook(lambda m, a, o: seen.__setitem__("src", o.detach().clone()))
    with torch.no_grad():
        lm.model(input_ids=torch.tensor([src_ids]))
    handle.remove()

    def logit(eps: torch.Tensor) -> torch.Tensor:
        def hook(m, a, out):
            delta = torch.zeros_like(out)
            delta[0, pos, cols] = seen["src"][0, pos, cols] - out[0, pos, cols]
            return out + eps * delta

        handle = mod.register_forward_hook(hook)
        try:
            return lm.model(input_ids=torch.tensor([ids])).logits[0, -1, target]
        finally:
            handle.remove()

    with torch.no_grad():
        _, tangent = torch.func.jvp(logit, (torch.tensor(0.0),), (torch.tensor(1.0),))
    return float(tangent)


def test_estimate_is_the_first_order_term(tiny_model_dir, tmp_path: Path) -> None:
    """On non-linear sites (GQA keys and values of the last layer, through attention, MLP and norms)
    the estimate equals the directional derivative computed by forward-mode AD."""
    lm = models.load(str(tiny_model_dir("llama")))
    fields = {
        "prompts": RECORDS[:1],
        "sweep": {"component": ["head_key_output", "head_value_output"], "head": [0, 1], "position": [9, 11, 13]},
        "interventions": [
            {"kind": "vanilla", "component": "$component", "layer": 1, "head": "$head", "position": "$position"}
        ],
        "metrics": ["target_logit"],
    }
    approx = run_rows(lm, tmp_path, "attribution", **fields)
    lm.model.set_attn_implementation("eager")  # forward-mode AD has no CPU flash-attention kernel
    tok = lm.tokenizer
    ids = tok(RECORDS[0]["base"], add_special_tokens=False)["input_ids"]
    src = tok(RECORDS[0]["source"], add_special_tokens=False)["input_ids"]
    target = tok(RECORDS[0]["target"], add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():
        run_logit = float(lm.model(input_ids=torch.tensor([ids])).logits[0, -1, target])
    hd = lm.info.head_dim
    moved = 0
    for a in approx:
        module = "model.layers.1.self_attn." + ("k_proj" if a["component"] == "head_key_output" else "v_proj")
        cols = slice(a["head"] * hd, (a["head"] + 1) * hd)
        slope = first_order(lm, module, ids, src, a["position"], cols, target)
        assert a["target_logit"] - run_logit == pytest.approx(slope, abs=1e-7), a
        moved += abs(slope) > 1e-4  # 1000× the tolerance (a random tiny model's logits move little)
    assert moved >= 4  # the derivative is not trivially zero
