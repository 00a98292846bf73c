"""Attribution over SAE features against a hand-written autograd computation on the latents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from ivx.model import loading as models
from ivx.model import sae as saes
from ivx.recipes import run as experiment

RECORD = {
    "base": "When Mary and John went to the store , John gave a drink to",
    "target": " Mary",
    "foil": " John",
    "source": "When Mary and John went to the store , Mary gave a drink to",
}
LAYER = 0
D_SAE = 48
POSITIONS = [2, 9, 13]  # a shared token, the token the source changes, the last token
BLOCK = {"gpt2": "transformer.h", "llama": "model.layers"}


def run(lm, tmp: Path, name: str, method: str, interventions: list, **fields) -> tuple[Path, list[dict]]:
    """One run on the loaded model; the run directory and its rows ordered by cell."""
    cfg = {
        "name": name,
        "model": {"name": str(lm.path)},
        "prompts": [RECORD],
        "method": method,
        "interventions": interventions,
        "metrics": ["logit_diff"],
        "output": {"root": str(tmp / "runs"), "logits": "none", "plots": False},
        **fields,
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_dir = experiment.run(path, progress=False, lm=lm)
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    return run_dir, sorted(rows, key=lambda r: r["cell"])


def feature_sweep(sae_dir: Path, kind: str = "vanilla") -> dict:
    return {
        "sweep": {"feature": list(range(D_SAE)), "position": POSITIONS},
        "interventions": [
            {"kind": kind, "sae": str(sae_dir), "feature": "$feature", "position": "$position"}
        ],
    }


def hand(lm, arch: str, sae: saes.SAE) -> dict[str, torch.Tensor]:
    """AtP on the latents by hand: the block's output replaced by decode(f) + err with f and err
    leaf tensors, logit_diff's gradient by autograd; the source run's f and err by a read hook."""
    tok = lm.tokenizer
    ids = tok(RECORD["base"], add_special_tokens=False)["input_ids"]
    src = tok(RECORD["source"], add_special_tokens=False)["input_ids"]
    target, foil = (tok(RECORD[k], add_special_tokens=False)["input_ids"][0] for k in ("target", "foil"))
    block = lm.model.get_submodule(f"{BLOCK[arch]}.{LAYER}")
    seen: dict[str, torch.Tensor] = {}

    def read(mod, args, out):
        seen["x"] = (out[0] if isinstance(out, tuple) else out)[0].detach().clone()  # [seq, d]

    def leaves(mod, args, out):
        x = (out[0] if isinstance(out, tuple) else out)[0]
        f = sae.encode(x).detach().requires_grad_()  # [seq, d_sae]
        err = (x - sae.decode(f, like=x)).detach().requires_grad_()  # [seq, d]
        seen.update(x_run=x.detach().clone(), f=f, err=err)
        new = (sae.decode(f, like=x) + err).unsqueeze(0)
        return (new, *out[1:]) if isinstance(out, tuple) else new

    with torch.no_grad():
        handle = block.register_forward_hook(read)
        lm.model(input_ids=torch.tensor([src]))
        handle.remove()
    handle = block.register_forward_hook(leaves)
    try:
        with torch.enable_grad():
            logits = lm.model(input_ids=torch.tensor([ids])).logits[0, -1]
            (logits[target] - logits[foil]).backward()
    finally:
        handle.remove()
    x_src = seen["x"]
    f_src = sae.encode(x_src).detach()
    err_src = (x_src - sae.decode(f_src, like=x_src)).detach()
    f, err = seen["f"], seen["err"]
    return {
        "features": ((f_src - f.detach()) * f.grad).detach(),  # [seq, d_sae]
        "zero": ((0 - f.detach()) * f.grad).detach(),  # [seq, d_sae]
        "error": ((err_src - err.detach()) * err.grad).sum(-1).detach(),  # [seq]
        "activation": ((x_src - seen["x_run"]) * err.grad).sum(-1).detach(),  # [seq]: ∂/∂x = ∂/∂err
        "run": (logits[target] - logits[foil]).detach(),
        "f": f.detach(),  # [seq, d_sae]
        "f_src": f_src,  # [seq, d_sae]
        "g_f": f.grad,  # [seq, d_sae]
        "err_grad_err": (err.detach() * err.grad).sum(-1),  # [seq]
    }


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def setup(request, tiny_model_dir, tmp_path_factory):
    """(arch, model, SAE, its directory, the hand values, the feature attribution run) per arch."""
    arch = request.param
    tmp = tmp_path_factory.mktemp(f"sae-atp-{arch}")
    lm = models.load(str(tiny_model_dir(arch)))
    sae = saes.random_sae(
        "standard", d_in=lm.info.d_model, d_sae=D_SAE, hook_name=f"blocks.{LAYER}.hook_resid_post", seed=3
    )
    sae_dir = saes.save(sae, tmp / "sae")
    sae = saes.load(sae_dir)
    want = hand(lm, arch, sae)
    run_dir, rows = run(lm, tmp, "atp", "attribution", **feature_sweep(sae_dir))
    site = json.loads((run_dir / "summary.json").read_text())["sae_attribution"]["sites"][0]
    return lm, sae_dir, want, rows, site


def test_feature_estimates_and_error_node_equal_autograd_on_the_latents(setup, tmp_path: Path) -> None:
    """Every feature × position row is (f_src − f) · ∂metric/∂f at the base run, each zero
    ablation −f · ∂metric/∂f; the error node is (err_src − err) · ∂metric/∂err (to 1e-5)."""
    lm, sae_dir, want, rows, site = setup
    _, zeros = run(lm, tmp_path, "atp_zero", "attribution", **feature_sweep(sae_dir, "zero"))
    assert len(rows) == len(zeros) == D_SAE * len(POSITIONS)
    run_value = float(want["run"])
    moved = 0
    for row, zero in zip(rows, zeros, strict=True):
        f, t = row["feature"], row["position"]
        assert row["approximate"] is True
        assert row["logit_diff"] - run_value == pytest.approx(float(want["features"][t, f]), abs=1e-5), row
        assert zero["logit_diff"] - run_value == pytest.approx(float(want["zero"][t, f]), abs=1e-5), zero
        moved += abs(float(want["features"][t, f])) > 1e-3
    assert moved >= 5  # the source run moves features that matter: the agreement is not trivial
    assert (site["component"], site["layer"]) == ("block_output", LAYER)
    errors = {e["position"]: e["logit_diff"] for e in site["error_nodes"]}
    assert len(errors) == len(want["error"])
    for t, value in errors.items():
        assert value == pytest.approx(float(want["error"][t]), abs=1e-5)
    assert max(abs(v) for v in errors.values()) > 1e-3  # a random SAE reconstructs poorly: the error matters
    assert site["top_features"][0]["logit_diff"] == pytest.approx(
        max((float(want["features"][t, f]) for t in POSITIONS for f in range(D_SAE)), key=abs), abs=1e-5
    )


def test_features_plus_error_node_equal_the_activation_estimate(setup, tmp_path: Path) -> None:
    """The decoder is linear in f: at each position, Σ feature nodes + error node = the AtP estimate
    of patching the whole activation, which ivx computes without the SAE (and the hand value)."""
    lm, sae_dir, want, rows, site = setup
    errors = {e["position"]: e["logit_diff"] for e in site["error_nodes"]}
    plain = {
        "sweep": {"position": POSITIONS},
        "interventions": [
            {"kind": "vanilla", "component": "block_output", "layer": LAYER, "position": "$position"}
        ],
    }
    _, act_rows = run(lm, tmp_path, "atp_plain", "attribution", **plain)
    run_value = float(want["run"])
    for act in act_rows:
        t = act["position"]
        features = sum(r["logit_diff"] - run_value for r in rows if r["position"] == t)
        assert features + errors[t] == pytest.approx(act["logit_diff"] - run_value, abs=1e-5)
        assert act["logit_diff"] - run_value == pytest.approx(float(want["activation"][t]), abs=1e-5)


def test_verification_reruns_are_exact_feature_patching(tiny_model_dir, tmp_path: Path) -> None:
    """`verify` re-runs its sample through the exact feature patching of `method: exact` (the same
    numbers), and the estimates track them."""
    lm = models.load(str(tiny_model_dir("gpt2")))
    sae = saes.random_sae(
        "standard", d_in=lm.info.d_model, d_sae=D_SAE, hook_name=f"blocks.{LAYER}.hook_resid_post", seed=3
    )
    sae_dir = saes.save(sae, tmp_path / "sae")
    sweep = feature_sweep(sae_dir)
    run_dir, _ = run(
        lm, tmp_path, "atp", "attribution", attribution={"verify": {"top_k": 8, "random": 8}}, **sweep
    )
    _, exact = run(lm, tmp_path, "exact", "exact", **sweep)
    report = json.loads((run_dir / "summary.json").read_text())["attribution_verification"]
    assert report["cells"] == 16 and len(report["verified"]) == 16
    by_cell = {r["cell"]: r["logit_diff"] for r in exact}
    for v in report["verified"]:
        assert v["exact"] == pytest.approx(by_cell[v["cell"]], abs=1e-6)
    assert report["metrics"]["logit_diff"]["pearson"] > 0.9


def test_a_feature_kind_attribution_cannot_estimate_is_a_located_problem(tmp_path: Path) -> None:
    from ivx.config import loader
    from ivx.core.errors import ConfigError
    from ivx.methods import registry

    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: bad\nmodel: {name: ivx-toy}\nprompts: [{base: a b, target: ' c'}]\nmethod: attribution\n"
        "interventions:\n  - {kind: collect, sae: saes/x, feature: 3}\nmetrics: [target_prob]\n"
    )
    with pytest.raises(ConfigError) as err:
        loader.load(path, (), (registry.config_checks,))
    found = [p for p in err.value.problems if "estimates SAE feature edits" in p.message]
    assert len(found) == 1 and found[0].line == 6 and "collect" in found[0].message


def test_other_feature_edits_are_their_first_order_terms(setup, tmp_path: Path) -> None:
    """scale, top-k, `sae_error: drop` and a source position other than the edited one, each
    against the same hand gradients: (f' − f) · ∂m/∂f (drop adds −err · ∂m/∂err)."""
    lm, sae_dir, want, _, _ = setup
    f, f_src, g_f = want["f"], want["f_src"], want["g_f"]
    t, s, i = 13, 9, int((f_src[13] - f[13]).mul(g_f[13]).abs().argmax())
    top2 = f[t].topk(2).indices
    cases = {
        "scale": ({"kind": "scale", "value": 3.0, "feature": i}, 2.0 * f[t, i] * g_f[t, i]),
        "top": ({"kind": "vanilla", "top": 2}, ((f_src[t] - f[t]) * g_f[t])[top2].sum()),
        "drop": (
            {"kind": "vanilla", "feature": i, "sae_error": "drop"},
            (f_src[t, i] - f[t, i]) * g_f[t, i] - want["err_grad_err"][t],
        ),
        "moved": (
            {"kind": "vanilla", "feature": i, "source_position": s},
            (f_src[s, i] - f[t, i]) * g_f[t, i],
        ),
    }
    run_value = float(want["run"])
    for name, (fields, expected) in cases.items():
        iv = {"sae": str(sae_dir), "position": t, **fields}
        _, rows = run(lm, tmp_path, name, "attribution", [iv])
        assert rows[0]["logit_diff"] - run_value == pytest.approx(float(expected), abs=1e-5), name
        assert abs(float(expected)) > 1e-4, name  # each case moves the metric (10× the tolerance)
