"""Attribution patching against exact patching and independent first-order computations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from ivx.cli.app import app
from ivx.methods import verification
from ivx.model import loading as models
from ivx.recipes import run as experiment

ROOT = Path(__file__).resolve().parents[2]
RECORDS = [
    {
        "base": "When Mary and John went to the store , John gave a drink to",
        "target": " Mary",
        "foil": " John",
        "source": "When Mary and John went to the store , Mary gave a drink to",
    },
    {
        "base": "When Tom and James went to the park , James gave a ball to",
        "target": " Tom",
        "foil": " James",
        "source": "When Tom and James went to the park , Tom gave a ball to",
    },
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


def first_order(
    lm, module: str, ids: list[int], src_ids: list[int], pos: int, cols: slice, target: int
) -> float:
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
        "sweep": {
            "component": ["head_key_output", "head_value_output"],
            "head": [0, 1],
            "position": [9, 11, 13],
        },
        "interventions": [
            {
                "kind": "vanilla",
                "component": "$component",
                "layer": 1,
                "head": "$head",
                "position": "$position",
            }
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


def capture(lm, module: str, ids: list[int], grad: bool = False, target: int | None = None, patch=None):
    """A module's output in a run of `ids` (optionally its target-logit gradient; `patch` edits
    another module's output first: (module, fn))."""
    store = {}

    def keep(m, a, out):
        raw = out[0] if isinstance(out, tuple) else out
        if grad:
            raw.retain_grad()
        store["out"] = raw

    handles = [lm.model.get_submodule(module).register_forward_hook(keep)]
    if patch is not None:
        handles.insert(0, lm.model.get_submodule(patch[0]).register_forward_hook(patch[1]))
    try:
        with torch.enable_grad():
            logit = lm.model(input_ids=torch.tensor([ids])).logits[0, -1, target or 0]
            if grad:
                logit.backward()
    finally:
        for h in handles:
            h.remove()
    out = store["out"]
    return (out.detach().clone(), out.grad.clone()) if grad else out.detach().clone()


def tokens(lm, record: dict) -> tuple[list[int], list[int], int]:
    tok = lm.tokenizer
    ids = tok(record["base"], add_special_tokens=False)["input_ids"]
    src = tok(record["source"], add_special_tokens=False)["input_ids"]
    return ids, src, tok(record["target"], add_special_tokens=False)["input_ids"][0]


def test_qk_fix_is_exact_through_the_attention_layer(tiny_model_dir, tmp_path: Path) -> None:
    """QK fix = (attention output with the patched key/query − the run's) · ∂metric/∂attention
    output, computed here with real patched forwards and autograd."""
    lm = models.load(str(tiny_model_dir("gpt2")))
    with torch.no_grad():  # sharpen the attention (queries × 8): the saturated regime AtP* targets
        for block in lm.model.transformer.h:
            block.attn.c_attn.weight[:, : lm.info.d_model] *= 8
    fields = {
        "prompts": RECORDS[:1],
        "attribution": {"qk_fix": True},
        "sweep": {"component": ["head_key_output", "head_query_output"], "head": [0, 1], "position": [9, 13]},
        "interventions": [
            {
                "kind": "vanilla",
                "component": "$component",
                "layer": 1,
                "head": "$head",
                "position": "$position",
            }
        ],
        "metrics": ["target_logit"],
    }
    approx = run_rows(lm, tmp_path, "attribution", **fields)
    ids, src, target = tokens(lm, RECORDS[0])
    d, hd = lm.info.d_model, lm.info.head_dim
    src_qkv = capture(lm, "transformer.h.1.attn.c_attn", src)
    run_attn, grad_attn = capture(lm, "transformer.h.1.attn", ids, grad=True, target=target)
    with torch.no_grad():
        run_logit = float(lm.model(input_ids=torch.tensor([ids])).logits[0, -1, target])
    moved = 0
    for a in approx:
        lo = (d if a["component"] == "head_key_output" else 0) + a["head"] * hd
        pos = a["position"]

        def patch(m, args, out, lo=lo, pos=pos):
            out = out.clone()
            out[0, pos, lo : lo + hd] = src_qkv[0, pos, lo : lo + hd]
            return out

        with torch.no_grad():
            patched = capture(lm, "transformer.h.1.attn", ids, patch=("transformer.h.1.attn.c_attn", patch))
        oracle = float(((patched - run_attn) * grad_attn).sum())
        # a random tiny model's logits move little: compare to 4 significant digits instead
        assert a["target_logit"] - run_logit == pytest.approx(oracle, rel=1e-3, abs=1e-9), a
        moved += abs(oracle) > 1e-7
    assert moved >= 4


def test_grad_drop_score(tiny_model_dir, tmp_path: Path) -> None:
    """GradDrop on a 2-layer model: an MLP of the last layer scores |estimate| (dropping layer 0
    changes nothing above it, dropping its own layer zeroes it); an MLP of layer 0 scores
    |Δ · ∂metric/∂(last residual)|, the path that skips layer 1's branch."""
    lm = models.load(str(tiny_model_dir("gpt2")))
    fields = {
        "prompts": RECORDS[:1],
        "attribution": {"grad_drop": True},
        "sweep": {"layer": [0, 1], "position": [9, 12]},
        "interventions": [
            {"kind": "vanilla", "component": "mlp_output", "layer": "$layer", "position": "$position"}
        ],
        "metrics": ["target_logit"],
    }
    approx = run_rows(lm, tmp_path, "attribution", **fields)
    ids, src, target = tokens(lm, RECORDS[0])
    with torch.no_grad():
        run_logit = float(lm.model(input_ids=torch.tensor([ids])).logits[0, -1, target])
    _, grad_last = capture(lm, "transformer.h.1", ids, grad=True, target=target)
    run_mlp0, src_mlp0 = (capture(lm, "transformer.h.0.mlp", x) for x in (ids, src))
    for a in approx:
        if a["layer"] == 1:
            assert a["grad_drop"] == pytest.approx(abs(a["target_logit"] - run_logit), rel=1e-4, abs=1e-7)
        else:
            pos = a["position"]
            direct = float(((src_mlp0 - run_mlp0)[0, pos] * grad_last[0, pos]).sum())
            assert a["grad_drop"] == pytest.approx(abs(direct), rel=1e-4, abs=1e-9)
            assert abs(direct) > 1e-6 or pos != 13  # only the last position reaches the logits directly


def test_correlates_with_exact_on_the_toy_trace(tmp_path: Path) -> None:
    """Non-linear case: ivx-toy's causal trace of block_output (3 facts, 2 noise samples, 152
    cells), attribution vs exact over every cell. Measured (seeded, so reproducible up to float
    noise): target_logit Pearson 0.91, Spearman 0.97; indirect_effect (a probability, which
    saturates: restoring a subject state moves p from ~0.02 to ~1 and the tangent at the
    corrupted run undershoots) Pearson 0.60, Spearman 0.78 (10 facts × 3 samples: 0.95 / 0.98
    and 0.50 / 0.85). Thresholds sit well below the measurements."""
    cfg = yaml.safe_load((ROOT / "configs" / "causal_trace.yaml").read_text())
    cfg.update(
        prompts={"file": str(ROOT / "configs" / "data" / "facts.jsonl"), "limit": 3},
        sweep={"component": ["block_output"], "layer": "all", "position": "all"},
        metrics=["indirect_effect", "target_logit"],
        output={"root": str(tmp_path), "logits": "none", "plots": False},
        trace={"select_correct": True, "plots_per_fact": 0},
    )
    cfg["corrupt"]["samples"] = 2
    lm = models.load("ivx-toy")
    rows = {}
    for method in ("exact", "attribution"):
        path = tmp_path / f"{method}.yaml"
        path.write_text(yaml.safe_dump({**cfg, "method": method}))
        run_dir = experiment.run(path, progress=False, lm=lm)
        rows[method] = {
            r["cell"]: r for r in map(json.loads, (run_dir / "results.jsonl").read_text().splitlines())
        }
    cells = sorted(rows["exact"])
    assert len(cells) > 100 and sorted(rows["attribution"]) == cells

    def series(method: str, metric: str) -> list[float]:
        return [rows[method][c][metric] for c in cells]

    logit = series("attribution", "target_logit"), series("exact", "target_logit")
    effect = series("attribution", "indirect_effect"), series("exact", "indirect_effect")
    assert verification.pearson(*logit) > 0.8
    assert verification.spearman(*logit) > 0.9
    assert verification.spearman(*effect) > 0.6


def test_shipped_config_runs_and_verifies(tmp_path: Path) -> None:
    """configs/attribution_trace.yaml through the CLI: approximate rows, a verification report
    in summary.json whose exact values match the exact method's own rows, and terminal lines."""
    path = ROOT / "configs" / "attribution_trace.yaml"
    sets = [
        "prompts.limit=2",
        "corrupt.samples=2",
        "sweep.head=[0, 1]",
        "sweep.component=[head_query_output, head_key_output]",
        "attribution.verify.top_k=5",
        "attribution.verify.random=5",
    ]
    args = ["run", str(path), "--out", str(tmp_path), *[x for s in sets for x in ("--set", s)]]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "attribution check: 10 cells re-run exactly" in result.output
    run_dir = Path(result.output.strip().splitlines()[-1])
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert rows and all(r["approximate"] is True for r in rows)
    report = json.loads((run_dir / "summary.json").read_text())["attribution_verification"]
    assert report["cells"] == 10 and len(report["verified"]) == 10
    top = sorted(rows, key=lambda r: -abs(r["indirect_effect"]))[:5]
    assert [v["cell"] for v in report["verified"][:5]] == [r["cell"] for r in top]
    data = yaml.safe_load(path.read_text())  # the same experiment with method: exact (no `attribution:`)
    del data["attribution"]
    data.update(
        method="exact", prompts={**data["prompts"], "file": str(ROOT / "configs" / "data" / "facts.jsonl")}
    )
    exact_path = tmp_path / "exact.yaml"
    exact_path.write_text(yaml.safe_dump(data, sort_keys=False))
    exact_args = [
        "run",
        str(exact_path),
        "--out",
        str(tmp_path),
        *[x for s in sets[:4] for x in ("--set", s)],
    ]
    exact = CliRunner().invoke(app, [*exact_args, "--set", "output.plots=false", "--quiet"])
    assert exact.exit_code == 0, exact.output
    exact_dir = Path(exact.output.strip().splitlines()[-1])
    truth = {r["cell"]: r for r in map(json.loads, (exact_dir / "results.jsonl").read_text().splitlines())}
    for v in report["verified"]:
        assert v["exact"] == pytest.approx(truth[v["cell"]]["indirect_effect"], abs=1e-6)


def test_unsupported_kinds_and_metrics_are_config_errors(tmp_path: Path) -> None:
    cfg = {
        "model": {"name": "ivx-toy"},
        "prompts": RECORDS,
        "method": "attribution",
        "interventions": [{"kind": "zero", "component": "mlp_output", "layer": 0, "position": "last"}],
        "metrics": ["target_prob", "target_rank"],
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if str(path) in line]
    assert any("interventions[0].kind" in line and "'zero'" in line and "vanilla" in line for line in lines)
    assert any("metrics[1]" in line and "'target_rank'" in line for line in lines)
    assert all(line.split()[0].rsplit(":", 1)[1].isdigit() for line in lines)


def test_qk_fix_on_a_rotary_model_is_a_config_error(tiny_model_dir, tmp_path: Path) -> None:
    """The QK fix models GPT-2's attention only: elsewhere `validate` names the field, exit 2."""
    cfg = {
        "model": {"name": str(tiny_model_dir("llama"))},
        "prompts": RECORDS,
        "method": "attribution",
        "attribution": {"qk_fix": True},
        "interventions": [
            {"kind": "vanilla", "component": "head_key_output", "layer": 0, "position": "last"}
        ],
    }
    path = tmp_path / "rotary.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{path}:" in result.output and "attribution.qk_fix" in result.output and "llama" in result.output
