"""The logit lens equals a hand computation from `output_hidden_states`, the final norm written
out and the unembedding as a matrix product, on gpt2 (LayerNorm, tied head), llama (RMSNorm, GQA,
untied head) and gpt_neox (parallel attention/MLP); also for a patched cell's run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from ivx.model import loading as models
from ivx.results import readout_plots
from tests.methods.readout_oracles import (
    ARCHS,
    PROMPTS,
    hand_norm,
    ids_of,
    perturb,
    run_readout,
    token,
    unembed,
)


def hand_lens(lm, arch: str, text: str, target: int, foil: int) -> dict[str, torch.Tensor]:
    """[sites, positions] target prob / rank and foil prob: embeddings and block outputs by hand."""
    with torch.no_grad():
        out = lm.model(input_ids=ids_of(lm, text), output_hidden_states=True)
        hs = out.hidden_states  # L + 1: embeddings, block outputs; the last one already normed
        n = len(hs) - 1
        logits = torch.stack(
            [
                unembed(lm.model, hs[s][0] if s == n else hand_norm(arch, lm.model, hs[s][0]))
                for s in range(n + 1)
            ]
        )  # [sites, seq, vocab]
    assert torch.allclose(logits[-1], out.logits[0], atol=1e-5)  # the lens's last row is the model's output
    probs = torch.softmax(logits, -1)
    rank = (logits > logits[..., target : target + 1]).sum(-1).float()
    return {"target_prob": probs[..., target], "target_rank": rank, "foil_prob": probs[..., foil]}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_lens_equals_hand_computation(arch: str, tiny_model_dir, tmp_path: Path) -> None:
    """Every site × position of both prompts (two lengths); rows, summary and readout.csv agree."""
    lm = models.load(str(tiny_model_dir(arch)))
    perturb(lm.model)
    rows, summary, run_dir = run_readout(lm, tmp_path, "logit_lens", PROMPTS)
    assert len(rows) == len(PROMPTS)
    section = summary["readout"]
    assert section["sites"] == ["block_input.0"] + [f"block_output.{i}" for i in range(lm.info.n_layers)]
    assert ("LayerNorm" if ARCHS[arch]["ln"] else "RMSNorm") in section["norm"]
    hands = []
    for row, record in zip(rows, PROMPTS, strict=True):
        hand = hand_lens(lm, arch, record["base"], token(lm, record["target"]), token(lm, record["foil"]))
        hands.append(hand)
        for name, want in hand.items():
            got = torch.tensor(row[f"lens_{name}"])
            assert got.shape == want.shape
            assert torch.allclose(got, want, atol=1e-5), (name, (got - want).abs().max())
        assert row["target_prob"] == pytest.approx(float(hand["target_prob"][-1, -1]), abs=1e-5)
    tokens = {p["prompt_index"]: p["tokens"] for p in summary["prompts"]}
    drawn = readout_plots.lens_figure(section, rows, tokens).axes[0].images[0].get_array()
    shortest = min(h["target_prob"].shape[1] for h in hands)
    aligned = torch.stack([h["target_prob"][:, -shortest:] for h in hands]).mean(0)  # from the end
    assert torch.allclose(torch.tensor(drawn.data).float(), aligned, atol=1e-6)
    last = torch.stack([h["target_prob"][:, -1] for h in hands]).mean(0)
    assert section["points"][0]["target_prob"]["last"] == pytest.approx(last.tolist(), abs=1e-5)
    with (run_dir / "readout.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == sum(h["target_prob"].numel() for h in hands)
    pick = next(
        r
        for r in table
        if r["prompt_index"] == "1" and r["site"] == "block_output.0" and r["position"] == "2"
    )
    assert float(pick["target_prob"]) == pytest.approx(float(hands[1]["target_prob"][1, 2]), abs=1e-6)


def test_lens_of_a_patched_cell(tiny_model_dir, tmp_path: Path) -> None:
    """A cell that copies the source's embeddings at every position runs the source prompt: its lens
    equals the hand lens of the source; the no-op cell's equals the base's (readout of each cell)."""
    lm = models.load(str(tiny_model_dir("gpt2")))
    base, source = PROMPTS[0]["base"], PROMPTS[0]["base"].replace(", John gave", ", Mary gave")
    record = {**PROMPTS[0], "source": source}
    iv = {"kind": "$kind", "component": "block_input", "layer": 0, "position": "all", "source": "source"}
    rows, _, _ = run_readout(
        lm, tmp_path, "logit_lens", [record], interventions=[iv], sweep={"kind": ["vanilla", "zero"]}
    )
    mary, john = token(lm, " Mary"), token(lm, " John")
    patched = next(r for r in rows if r["kind"] == "vanilla")
    want = hand_lens(lm, "gpt2", source, mary, john)["target_prob"]
    assert torch.allclose(torch.tensor(patched["lens_target_prob"]), want, atol=1e-5)
    assert not torch.allclose(want, hand_lens(lm, "gpt2", base, mary, john)["target_prob"], atol=1e-3)
    zeroed = next(r for r in rows if r["kind"] == "zero")  # embeddings zeroed: layer 0's lens is uniform-ish
    assert zeroed["lens_target_prob"] != patched["lens_target_prob"]
    off = {k: False for k in ("prefix_reuse", "layer_reuse", "defer_head", "trim_final", "skip_noop")}
    rows_off, _, _ = run_readout(
        lm,
        tmp_path,
        "logit_lens",
        [record],
        interventions=[iv],
        sweep={"kind": ["vanilla", "zero"]},
        batch=off,
    )
    assert rows_off == rows  # a readout runs one plain forward per cell: the shortcuts never touch it


@pytest.mark.slow
def test_shipped_config_runs_on_ivx_toy(tmp_path: Path) -> None:
    """configs/logit_lens.yaml on ivx-toy (3 facts): the last site equals the cell's own target_prob."""
    from ivx.recipes import run as experiment

    root = Path(__file__).resolve().parents[2]
    sets = ("prompts.limit=3", f"output.root={tmp_path}")
    run_dir = experiment.run(root / "configs" / "logit_lens.yaml", sets, progress=False)
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    for row in rows:
        assert row["lens_target_prob"][-1][-1] == pytest.approx(row["target_prob"], abs=1e-6)
        assert row["lens_target_rank"][-1][-1] == row["target_rank"]
    assert (run_dir / "plots" / "logit_lens.png").is_file()
