"""ivx-toy shows the published pictures: ROME's causal trace and IOI name-moving, from real runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ivx.model import loading as models
from ivx.recipes import run as experiment
from ivx.toy import world as toy_world
from ivx.toy.train import BAR, evaluate

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_model_meets_the_accuracy_bar() -> None:
    lm = models.load("ivx-toy")
    card = json.loads((models.BUNDLED["ivx-toy"] / "training.json").read_text())
    scores = evaluate(lm.model, lm.tokenizer, toy_world.build(card["settings"]["seed"]))
    assert scores["facts"] >= BAR["facts"] and scores["ioi"] >= BAR["ioi"], scores


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("trace")
    run_dir = experiment.run(
        ROOT / "configs" / "causal_trace.yaml",
        ("prompts.limit=60", "corrupt.samples=5", "trace.plots_per_fact=1"),
        out_root=str(out),
        progress=False,
    )
    assert (run_dir / "plots" / "average_by_category.png").is_file()
    assert (run_dir / "plots" / "prompt0000.png").is_file() or list((run_dir / "plots").glob("prompt*.png"))
    return json.loads((run_dir / "summary.json").read_text())["trace"]


@pytest.mark.slow  # a 60-fact, 5-sample trace: ~10 s; the fast tier runs the shipped trace config
def test_trace_has_the_rome_shape(trace: dict) -> None:
    """Subject tokens matter early, the last token late, positions before the subject not at all."""
    assert trace["facts"] >= 50
    assert trace["p_clean"] - trace["p_corrupted"] > 0.3
    for comp in ("block_output", "mlp_output"):
        cats = trace["components"][comp]["by_category"]
        subject = [
            max(
                cats[c]["mean"][layer]
                for c in ("subject_first", "subject_middle", "subject_last")
                if c in cats
            )
            for layer in range(trace["n_layers"])
        ]
        last = cats["last"]["mean"]
        before = cats["before_subject"]["mean"]
        assert max(abs(v) for v in before) < 0.02, before  # ~0 before the subject
        assert subject[0] > 0.2, subject  # the subject site, early
        assert subject[0] >= subject[-1] + 0.1, subject  # and it fades with depth
        if comp == "block_output":
            assert last[-1] > 0.8 * (trace["p_clean"] - trace["p_corrupted"])  # last token, late
            assert last[-1] > last[0] + 0.2, last  # rises with depth
    mlp = trace["components"]["mlp_output"]["by_category"]
    early = max(mlp[c]["mean"][0] for c in ("subject_first", "subject_middle", "subject_last") if c in mlp)
    assert early > 0.1  # on a 4-layer model the MLP site sits in layer 0


def test_ioi_patching_moves_names_to_the_end(tmp_path: Path) -> None:
    run_dir = experiment.run(
        ROOT / "configs" / "activation_patching.yaml",
        ("prompts.limit=30",),
        out_root=str(tmp_path),
        progress=False,
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    # the model really does IOI: the clean prompt favours the target, the S2-swapped one the foil
    for prompt in summary["prompts"]:
        assert prompt["clean"]["logit_diff"] > 2.0 and prompt["corrupted"]["logit_diff"] < -2.0, prompt
    assert "warnings" not in summary, summary.get("warnings")
    grid = {(g["component"], g["layer"], g["position"]): g["logit_diff_norm"] for g in summary["grid"]}
    n_layers = max(layer for _, layer, _ in grid) + 1
    last = max(pos for _, _, pos in grid)
    s2 = last - 4  # "... , {S2} brought a {object} to": the swapped name token
    inp, out = "block_input", "block_output"
    # at the start (block_input of layer 0 = embeddings) the answer sits at the S2 name token only
    assert grid[(inp, 0, s2)] > 0.9 and abs(grid[(inp, 0, last)]) < 1e-6
    # by the end it has moved to the final position: restoring it there recovers ~all of it, and
    # restoring the name token no longer matters
    assert grid[(out, n_layers - 1, last)] > 0.95
    assert abs(grid[(out, n_layers - 1, s2)]) < 0.05 and abs(grid[(inp, n_layers - 1, s2)]) < 0.05
    # the move across layers: where the name token stops mattering, the final position starts to
    moved = min(layer for layer in range(n_layers) if grid[(out, layer, last)] > 0.9)
    assert all(abs(grid[(out, layer, s2)]) < 0.05 for layer in range(moved, n_layers))
    assert all(grid[(inp, layer, last)] > 0.9 for layer in range(moved + 1, n_layers))
    assert all(
        abs(grid[(comp, layer, pos)]) < 1e-6
        for comp in (inp, out)
        for layer in range(n_layers)
        for pos in range(s2)
    )  # identical prefix


@pytest.mark.slow
def test_retraining_from_scratch_reaches_the_bar(tmp_path: Path) -> None:
    """The shipped recipe (seed 0) retrains to the bar; takes ~5-8 minutes on 2 cores."""
    from ivx.toy.train import Settings, train

    report = train(tmp_path / "toy", Settings(), log=lambda m: None)
    assert report["accuracy"]["facts"] >= BAR["facts"] and report["accuracy"]["ioi"] >= BAR["ioi"]


@pytest.mark.slow  # two corruption runs side by side: ~4 s
def test_noise_and_token_replacement_side_by_side(tmp_path: Path) -> None:
    """`corrupt` as a list: both corruptions traced in one run, reported side by side."""
    import yaml

    from ivx.config.loader import parse

    cfg = parse((ROOT / "configs" / "causal_trace.yaml").read_text())
    cfg["corrupt"] = [{"kind": "noise", "samples": 3}, {"kind": "replace"}]
    cfg["prompts"] = {"file": str(ROOT / "configs" / "data" / "facts.jsonl"), "limit": 40}
    cfg["sweep"]["component"] = ["block_output"]
    cfg["trace"] = {"plots_per_fact": 1}
    path = tmp_path / "both.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_dir = experiment.run(path, out_root=str(tmp_path), progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["traces"]) == {"noise", "replace"}
    rows = [json.loads(x) for x in (run_dir / "results.jsonl").read_text().splitlines()]
    assert {r["corruption"] for r in rows} == {"noise", "replace"}
    assert len({r["cell"] for r in rows}) == len(rows)
    for label, trace in summary["traces"].items():
        cats = trace["components"]["block_output"]["by_category"]
        assert trace["p_clean"] - trace["p_corrupted"] > 0.3, label
        assert max(abs(v) for v in cats["before_subject"]["mean"]) < 0.02, label
        assert cats["last"]["mean"][-1] > 0.8 * (trace["p_clean"] - trace["p_corrupted"]), label
        assert (run_dir / "plots" / f"average_by_category_{label}.png").is_file()
    # replacing the subject with another subject: the other subject's city wins, clean p drops to ~0
    assert summary["traces"]["replace"]["p_corrupted"] < summary["traces"]["noise"]["p_corrupted"]
    # from plain forwards, for both corruptions: p_clean is the uncorrupted prompt's, and restoring the
    # last block's output at the last token gives it back exactly (nothing after it mixes positions)
    import torch

    lm = models.load("ivx-toy")
    last_layer, restored = lm.info.n_layers - 1, 0
    for prompt in summary["prompts"]:
        ids = lm.tokenizer(prompt["base"], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            probs = torch.softmax(lm.model(torch.tensor([ids])).logits[0, -1], -1)
        p_clean = float(probs[prompt["target_ids"][0]])
        mine = [r for r in rows if r["prompt_index"] == prompt["prompt_index"]]
        assert {r["corruption"] for r in mine} == {"noise", "replace"}
        assert all(r["p_clean"] == pytest.approx(p_clean, abs=1e-5) for r in mine)
        for r in mine:
            if (r["layer"], r["position"]) == (last_layer, len(ids) - 1):
                restored += 1
                assert r["target_prob"] == pytest.approx(p_clean, abs=1e-5), r
    assert restored == 2 * len(summary["prompts"]) == 80
