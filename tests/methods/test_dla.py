"""Direct logit attribution equals a hand computation — per-head outputs from hooks on the output
projection's input times that head's slice of W_O, MLP outputs from hooks, the final norm's scale
frozen at the final residual — and its parts sum to the model's own logit difference, on gpt2,
llama (GQA, RMSNorm, untied head) and gpt_neox (parallel attention/MLP)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from ivx.core.errors import ConfigError
from ivx.model import loading as models
from ivx.results import readout_plots
from tests.methods.readout_oracles import (
    ARCHS,
    PROMPTS,
    frozen_scale,
    gain,
    ids_of,
    perturb,
    run_readout,
    token,
)


def _head_slice(module: Any, z: torch.Tensor, h: int, hd: int) -> torch.Tensor:
    """One head's output: z_h @ W_O[h] (Conv1D stores W as [in, out], Linear as [out, in])."""
    sl = slice(h * hd, (h + 1) * hd)
    if type(module).__name__ == "Conv1D":
        return z[..., sl] @ module.weight[sl, :]
    return z[..., sl] @ module.weight[:, sl].T


def hand_dla(lm: Any, arch: str, text: str, target: int, foil: int | None) -> dict[str, Any]:
    """Every part's contribution at the last position, with raw torch hooks and the weights."""
    spec, model, info = ARCHS[arch], lm.model, lm.info
    blocks = [spec["block"].format(i) for i in range(info.n_layers)]
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for i, block in enumerate(blocks):
        handles.append(
            model.get_submodule(f"{block}.{spec['z']}").register_forward_pre_hook(
                lambda m, a, i=i: seen.__setitem__(f"z{i}", a[0][0, -1].clone())
            )
        )
        handles.append(
            model.get_submodule(f"{block}.mlp").register_forward_hook(
                lambda m, a, o, i=i: seen.__setitem__(
                    f"mlp{i}", (o[0] if isinstance(o, tuple) else o)[0, -1].clone()
                )
            )
        )
    handles.append(
        model.get_submodule(blocks[-1]).register_forward_hook(
            lambda m, a, o: seen.__setitem__("final", (o[0] if isinstance(o, tuple) else o)[0, -1].clone())
        )
    )
    try:
        with torch.no_grad():
            out = model(input_ids=ids_of(lm, text), output_hidden_states=True)
    finally:
        for handle in handles:
            handle.remove()
    norm, head = model.get_submodule(spec["norm"]), model.get_output_embeddings()
    d = head.weight[target] - (head.weight[foil] if foil is not None else 0)
    u = gain(arch, model) * d / frozen_scale(arch, model, seen["final"])

    def contrib(c: torch.Tensor) -> float:
        return float(((c - c.mean()) if spec["ln"] else c) @ u)

    hd = info.head_dim
    with torch.no_grad():
        heads, biases = [], []
        for i, block in enumerate(blocks):
            o_proj = model.get_submodule(f"{block}.{spec['z']}")
            heads.append([contrib(_head_slice(o_proj, seen[f"z{i}"], h, hd)) for h in range(info.n_heads)])
            biases.append(contrib(o_proj.bias) if o_proj.bias is not None else 0.0)
        const = float(d @ norm.bias) if getattr(norm, "bias", None) is not None else 0.0
        last = out.logits[0, -1]
        return {
            "heads": heads,
            "attn_bias": biases,
            "mlp": [contrib(seen[f"mlp{i}"]) for i in range(info.n_layers)],
            "embed": contrib(out.hidden_states[0][0, -1]),
            "bias": const,
            "logit": float(last[target] - (last[foil] if foil is not None else 0)),
        }


@pytest.mark.parametrize("arch", list(ARCHS))
def test_dla_equals_hand_computation(arch: str, tiny_model_dir, tmp_path: Path) -> None:
    """Heads, MLPs, embeddings, biases by hand; both the hand parts and ivx's sum to the logit difference."""
    lm = models.load(str(tiny_model_dir(arch)))
    perturb(lm.model)
    rows, summary, _ = run_readout(lm, tmp_path, "dla", PROMPTS)
    for row, record in zip(rows, PROMPTS, strict=True):
        hand = hand_dla(lm, arch, record["base"], token(lm, record["target"]), token(lm, record["foil"]))
        parts = sum(map(sum, hand["heads"])) + sum(hand["mlp"]) + sum(hand["attn_bias"]) + hand["embed"]
        assert parts + hand["bias"] == pytest.approx(hand["logit"], abs=1e-4)  # the identity, by hand
        assert torch.allclose(torch.tensor(row["dla_heads"]), torch.tensor(hand["heads"]), atol=1e-5)
        for name in ("mlp", "attn_bias", "embed", "bias"):
            assert row[f"dla_{name}"] == pytest.approx(hand[name], abs=1e-5), name
        assert row["dla_logit"] == pytest.approx(hand["logit"], abs=1e-5)
        assert row["dla_total"] == pytest.approx(row["dla_logit"], abs=1e-5)
        assert row["logit_diff"] == pytest.approx(hand["logit"], abs=1e-5)
        assert row["dla_direction"] == "target - foil"
    if arch == "gpt2":  # biases are real terms here, not zeros
        assert abs(rows[0]["dla_bias"]) > 1e-3 and abs(sum(rows[0]["dla_attn_bias"])) > 1e-3
    point = summary["readout"]["points"][0]
    assert point["n"] == 2
    assert point["total"] == pytest.approx((rows[0]["dla_total"] + rows[1]["dla_total"]) / 2, abs=1e-6)
    mean_heads = (torch.tensor(rows[0]["dla_heads"]) + torch.tensor(rows[1]["dla_heads"])) / 2
    drawn = readout_plots.dla_figure(summary["readout"]).axes[0].images[0].get_array()
    assert torch.allclose(
        torch.tensor(drawn.data), mean_heads.double(), atol=1e-9
    )  # the figure shows the means


def test_dla_without_foil_is_the_target_logit(tiny_model_dir, tmp_path: Path) -> None:
    """No foil: each part's contribution to the target logit alone (llama: untied head, no biases)."""
    lm = models.load(str(tiny_model_dir("llama")))
    record = {"base": PROMPTS[1]["base"], "target": PROMPTS[1]["target"]}
    rows, _, _ = run_readout(lm, tmp_path, "dla", [record])
    hand = hand_dla(lm, "llama", record["base"], token(lm, record["target"]), None)
    assert rows[0]["dla_direction"] == "target"
    assert torch.allclose(torch.tensor(rows[0]["dla_heads"]), torch.tensor(hand["heads"]), atol=1e-5)
    assert rows[0]["dla_total"] == pytest.approx(hand["logit"], abs=1e-5)


def test_dla_of_noised_runs_sums_to_their_logit_difference(tiny_model_dir, tmp_path: Path) -> None:
    """With `corrupt: noise` each cell's run is the corrupted one (2 samples, averaged): the parts still
    sum to the run's mean logit difference, which is the row's p_corrupted run, not the clean one."""
    lm = models.load(str(tiny_model_dir("gpt_neox")))
    corrupt = {"kind": "noise", "positions": [1, 2], "samples": 2, "sigma": 1.0}
    rows, _, _ = run_readout(lm, tmp_path, "dla", PROMPTS[:1], corrupt=corrupt, metrics=["logit_diff"])
    row = rows[0]
    assert row["dla_total"] == pytest.approx(row["dla_logit"], abs=1e-5)
    clean = hand_dla(lm, "gpt_neox", PROMPTS[0]["base"], token(lm, " Mary"), token(lm, " John"))
    assert abs(row["dla_logit"] - clean["logit"]) > 1e-3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"method": "attribution"}, "use method: exact"),
        ({"answer": "full", "metrics": ["target_prob"]}, "first answer token"),
    ],
)
def test_readout_config_problems(extra: dict[str, Any], message: str, tiny_model_dir, tmp_path: Path) -> None:
    """Combinations a readout cannot honour are config errors at `readout`, before any forward pass."""
    lm = models.load(str(tiny_model_dir("gpt2")))
    with pytest.raises(ConfigError) as info:
        run_readout(lm, tmp_path, "dla", PROMPTS[:1], **extra)
    assert any(p.path == "readout" and message in p.message for p in info.value.problems), info.value.problems


def test_readout_needs_a_target(tiny_model_dir, tmp_path: Path) -> None:
    lm = models.load(str(tiny_model_dir("gpt2")))
    with pytest.raises(ConfigError, match="needs a `target` in every record"):
        run_readout(lm, tmp_path, "logit_lens", [{"base": PROMPTS[1]["base"]}], metrics=["kl"])


def test_readout_resumes_exactly_and_keeps_all_logits(tiny_model_dir, tmp_path: Path) -> None:
    """An interrupted readout run resumes to the same rows (cells are read out prompt by prompt);
    output.logits: all keeps each cell's `[seq, vocab]` logits, equal to the model's."""
    import json

    from safetensors.torch import load_file

    from ivx.recipes import run as experiment

    lm = models.load(str(tiny_model_dir("gpt2")))
    rows, _, run_dir = run_readout(
        lm, tmp_path, "dla", PROMPTS, output={"root": str(tmp_path), "logits": "all"}
    )
    results = run_dir / "results.jsonl"
    results.write_text(results.read_text().splitlines()[0] + "\n")  # interrupted after the first prompt
    manifest = json.loads((run_dir / "manifest.json").read_text())
    (run_dir / "manifest.json").write_text(json.dumps({**manifest, "status": "failed"}))
    experiment.run(run_dir / "config.yaml", resume=run_dir, progress=False, lm=lm)
    resumed = sorted((json.loads(line) for line in results.read_text().splitlines()), key=lambda r: r["cell"])
    assert resumed == rows
    with torch.no_grad():
        want = lm.model(input_ids=ids_of(lm, PROMPTS[1]["base"])).logits[0]
    assert torch.allclose(load_file(str(run_dir / "tensors.safetensors"))["cell1"], want, atol=1e-5)


def test_other_commands_refuse_a_readout(tiny_model_dir, tmp_path: Path) -> None:
    """`ivx generate` would ignore `readout:`: a config problem naming it."""
    import yaml

    from ivx.recipes.prepare import prepare_all

    lm = models.load(str(tiny_model_dir("gpt2")))
    path = tmp_path / "gen.yaml"
    cfg = {"name": "g", "model": {"name": str(lm.path)}, "prompts": PROMPTS[:1], "readout": "logit_lens"}
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError) as info:
        prepare_all(path, (), lm, mode="generate")
    assert any(p.path == "readout" and "ivx generate` does not" in p.message for p in info.value.problems)
