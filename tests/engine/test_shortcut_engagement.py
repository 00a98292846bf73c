"""Each exact shortcut engages with the installed transformers, and one that cannot is switched off loudly.

A shortcut that silently stops engaging costs speed (the speed issue: a transformers release
made the defaults slower than a plain forward); one that engages wrongly would cost exactness.
The manifest's `shortcuts` record says which ran, per prompt length, and why one did not.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ivx.engine import shortcuts
from ivx.model import kvcache
from ivx.plan.schedule import Cost
from ivx.recipes import run as experiment

FACTS = [
    {"base": f"In the old records , {s} is located in the city of", "subject": s, "target": t}
    for s, t in (("Space Needle", " Seattle"), ("Eiffel Tower", " Paris"))
]
OFF = {"prefix_reuse": False, "layer_reuse": False, "skip_noop": False, "defer_head": False}


def _trace(model_dir: Path, batch: dict | None = None) -> dict:
    return {
        "name": "engage",
        "model": {"name": str(model_dir)},
        "prompts": FACTS,
        "corrupt": {"kind": "noise", "positions": "subject", "samples": 2},
        "sweep": {"layer": "all", "position": "all"},
        "interventions": [
            {"kind": "vanilla", "component": "block_output", "layer": "$layer", "position": "$position"}
        ],
        "metrics": ["target_prob", "indirect_effect"],
        "output": {"plots": False, "logits": "last"},
        "batch": batch or {},
    }


def _run(tmp_path: Path, name: str, body: dict) -> tuple[dict, dict]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body))
    run_dir = experiment.run(path, out_root=str(tmp_path / name), progress=False)
    return json.loads((run_dir / "manifest.json").read_text()), load_file(
        str(run_dir / "tensors.safetensors")
    )


COMPUTE_BOUND = Cost(block=1e-9, token=1.0)  # every token counts: reuse prefixes, skip blocks
WEIGHT_BOUND = Cost(block=1.0, token=1e-9, call=1.0)  # every forward counts: pack all cells together


def test_tiny_models_are_packed_by_the_cost_model(tiny_model_dir, tmp_path: Path) -> None:
    """A 2-layer width-32 model is all per-call overhead: one forward beats one per prefix."""
    manifest, _ = _run(tmp_path, "tiny", _trace(tiny_model_dir("gpt2")))
    (group,) = manifest["shortcuts"]["groups"]
    assert group["forwards"] == 1
    assert group["staggered"]  # the one forward's rows enter the blocks at their own layers


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gpt_neox"])
def test_every_shortcut_engages(
    arch: str, tiny_model_dir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shortcuts, "estimate", lambda lm: COMPUTE_BOUND)
    manifest, tensors = _run(tmp_path, "on", _trace(tiny_model_dir(arch)))
    _, reference = _run(tmp_path, "off", _trace(tiny_model_dir(arch), OFF))
    for key in reference:
        torch.testing.assert_close(tensors[key], reference[key], atol=2e-5, rtol=1e-5)
    report = manifest["shortcuts"]
    assert {k: v["on"] for k, v in report["shortcuts"].items()} == {
        "prefix_reuse": True,
        "layer_reuse": True,
        "skip_noop": True,
        "defer_head": True,
        "trim_final": True,
    }, report
    (group,) = report["groups"]  # both facts have 13 tokens
    assert group["cells"] == 2 * 2 * 13
    # 5 positions before the subject x 2 layers x 2 facts are answered by the baseline
    assert group["noop_cells"] == manifest["cells_noop"] == 5 * 2 * 2
    assert group["packing"] == "prefix_reuse" and group["cells_after_prefix"] > 0
    assert group["cells_skipping_blocks"] > 0
    assert report["cache_argument"] in ("cache", "past_key_values")


@pytest.mark.parametrize("arch", ["gpt2", "llama", "opt", "gemma", "gpt_neox"])
@pytest.mark.parametrize("cost", [COMPUTE_BOUND, WEIGHT_BOUND], ids=["compute_bound", "weight_bound"])
def test_every_packing_changes_no_number(
    arch: str, cost: Cost, tiny_model_dir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the cost model chooses (one staggered forward per reused prefix, or all prefixes in
    one forward), cell logits equal the all-off run: two corruptions, MLP windows, both components."""
    monkeypatch.setattr(shortcuts, "estimate", lambda lm: cost)
    body = {
        **_trace(tiny_model_dir(arch)),
        "corrupt": [{"kind": "noise", "positions": "subject", "samples": 2}, {"kind": "replace"}],
        "sweep": {"component": ["block_output", "mlp_output"], "layer": "all", "position": "all"},
        "interventions": [
            {
                "kind": "vanilla",
                "component": "$component",
                "layer": "$layer",
                "position": "$position",
                "window": {"mlp_output": 2},
            }
        ],
    }
    manifest, tensors = _run(tmp_path, "fast", body)
    _, reference = _run(tmp_path, "slow", {**body, "batch": OFF})
    assert tensors.keys() == reference.keys() and len(tensors) > 100
    for key in reference:
        torch.testing.assert_close(tensors[key], reference[key], atol=2e-5, rtol=1e-5)
    groups = [g for part in manifest["shortcuts"].values() for g in part["groups"]]
    forwards = sum(g["forwards"] for g in groups)
    if cost is COMPUTE_BOUND:  # one forward per reused prefix, rows entering at their own layers
        assert {g["packing"] for g in groups} == {"prefix_reuse"} and all(g["staggered"] for g in groups)
        assert forwards >= 13
    else:  # prefixes merged: a handful of forwards for all cells
        assert forwards <= 2 * len(groups)


def test_all_off_is_reported_as_config(tiny_model_dir, tmp_path: Path) -> None:
    manifest, _ = _run(tmp_path, "off", _trace(tiny_model_dir("gpt2"), OFF))
    state = manifest["shortcuts"]["shortcuts"]
    assert all(not v["on"] and v["why"].startswith("off in config") for v in state.values())
    assert manifest["shortcuts"]["groups"][0]["packing"] == "full"


def test_a_cache_api_change_is_caught_and_numbers_stay_exact(
    tiny_model_dir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If transformers stopped reading the cache argument ivx passes, continuing from a cache would
    silently restart at position 0. The pre-run check notices, switches prefix reuse (and layer
    reuse, which needs it) off, and every number equals the all-off run."""
    model = tiny_model_dir("gpt2")
    reference, ref_tensors = _run(tmp_path, "ref", _trace(model, OFF))
    monkeypatch.setattr(kvcache, "argument", lambda forward: "an_argument_nobody_reads")
    manifest, tensors = _run(tmp_path, "broken", _trace(model))
    state = manifest["shortcuts"]["shortcuts"]
    assert not state["prefix_reuse"]["on"] and "differ from the plain forward" in state["prefix_reuse"]["why"]
    assert not state["layer_reuse"]["on"] and state["layer_reuse"]["why"] == "needs prefix reuse"
    assert state["defer_head"]["on"] and state["skip_noop"]["on"]
    assert tensors.keys() == ref_tensors.keys()
    for key in tensors:
        torch.testing.assert_close(tensors[key], ref_tensors[key], atol=2e-5, rtol=1e-5)
    assert reference["cells_noop"] == 0 and manifest["cells_noop"] == 20


def test_terminal_names_a_shortcut_that_could_not_engage() -> None:
    from ivx.engine import shortcuts

    report = {
        "transformers": "9.9",
        "shortcuts": {
            "prefix_reuse": {"on": False, "why": "results differ from the plain forward (transformers 9.9)"},
            "layer_reuse": {"on": False, "why": "off in config (batch.layer_reuse)"},
        },
        "groups": [],
    }
    lines = shortcuts.describe(report)
    assert lines[0] == "shortcuts (transformers 9.9): prefix reuse off, layer reuse off"
    assert lines[1:] == [
        "warning: prefix reuse is off: results differ from the plain forward (transformers 9.9)"
    ]


def _rider_config(model_dir: Path, prompts: list[dict], positions: list[int]) -> dict:
    """Restore `block_output` from the source at every layer and `positions` (no corruption)."""
    return {
        "name": "riders",
        "model": {"name": str(model_dir)},
        "prompts": prompts,
        "sweep": {"layer": "all", "position": positions},
        "interventions": [
            {
                "kind": "vanilla",
                "component": "block_output",
                "layer": "$layer",
                "position": "$position",
                "source_position": "$position",
            }
        ],
        "metrics": ["target_prob"],
        "output": {"plots": False, "logits": "last"},
    }


def _spy_captures(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """The prompts of every separate clean/source capture (`baselines.capture`) from now on."""
    from ivx.engine import baselines

    captured: list[list[int]] = []
    real = baselines.capture

    def spy(work, ids_of, wanted):  # type: ignore[no-untyped-def]
        captured.append(sorted(ids_of))
        return real(work, ids_of, wanted)

    monkeypatch.setattr(baselines, "capture", spy)
    return captured


def test_source_runs_ride_in_the_baseline_forward(
    tiny_model_dir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a corruption, a source as long as its base runs as an extra row of the baseline's
    forward (one forward, not two); a longer source is captured on its own. Restoring the last
    block's output at the last position from the source gives the source run's own last logits
    (an identity), so every cell at the last layer checks the captured source exactly."""
    model_dir = tiny_model_dir("llama")
    base = "When Mary and John went to the store , John gave a drink to"
    prompts = [
        {"base": base, "source": base.replace(", John", ", Mary"), "target": " Mary", "foil": " John"},
        {"base": base, "source": "Then " + base.replace(", John", ", Mary"), "target": " Mary"},
    ]
    body = _rider_config(model_dir, prompts, [0, -1])
    captured = _spy_captures(monkeypatch)
    path = tmp_path / "riders.yaml"
    path.write_text(yaml.safe_dump(body))
    on = experiment.run(path, out_root=str(tmp_path / "on"), progress=False)
    assert captured == [[1]]  # prompt 0's source rode along; prompt 1's is longer
    captured.clear()
    path.write_text(yaml.safe_dump({**body, "batch": OFF}))
    off = experiment.run(path, out_root=str(tmp_path / "off"), progress=False)
    assert captured == [[0, 1], [0, 1]]  # clean and source captures, each on its own
    a, b = load_file(str(on / "tensors.safetensors")), load_file(str(off / "tensors.safetensors"))
    for key in b:
        torch.testing.assert_close(a[key], b[key], atol=2e-5, rtol=1e-5)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    top = model.config.num_hidden_layers - 1
    rows = [json.loads(line) for line in (on / "results.jsonl").read_text().splitlines()]
    checked = 0
    for row in rows:
        prompt = body["prompts"][row["prompt_index"]]
        with torch.no_grad():
            logits = model(torch.tensor([tok(prompt["source"])["input_ids"]])).logits[0, -1]
        target = tok(prompt["target"], add_special_tokens=False)["input_ids"][0]
        expected = float(logits.softmax(-1)[target])
        assert row["p_clean"] == pytest.approx(expected, abs=1e-6)  # the source run's own logits
        if row["layer"] == top and row["position"] == -1:
            assert row["target_prob"] == pytest.approx(expected, abs=1e-6)
            checked += 1
    assert checked == 2


@pytest.mark.parametrize("style", ["gpt2", "llama"])  # byte-level BPE; SentencePiece with BOS
def test_source_runs_ride_along_with_real_tokenizers(
    style: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same with real tokenizer conventions: whether a source rides is decided on token
    counts (BOS included), and the riding source's reference equals its own capture's."""
    from transformers import AutoTokenizer

    from tests.tokenizers import build

    model_dir = build(style, tmp_path / style)
    tok = AutoTokenizer.from_pretrained(model_dir)
    base = "The Space Needle is located in the city of"
    count = len(tok(base)["input_ids"])
    swaps = ("The Eiffel Tower is located in the city of", "The Golden Gate is located in the city of")
    same = [s for s in (base.replace("Space", "Golden"), *swaps) if len(tok(s)["input_ids"]) == count]
    assert same, "no same-length source among the candidates"
    prompts = [
        {"base": base, "source": same[0], "target": " Seattle"},
        {"base": base, "source": "In 1889, " + same[0], "target": " Seattle"},
    ]
    body = _rider_config(model_dir, prompts, [-1])
    captured = _spy_captures(monkeypatch)
    path = tmp_path / "riders.yaml"
    path.write_text(yaml.safe_dump(body))
    on = experiment.run(path, out_root=str(tmp_path / "on"), progress=False)
    assert captured == [[1]]
    path.write_text(yaml.safe_dump({**body, "batch": OFF}))
    off = experiment.run(path, out_root=str(tmp_path / "off"), progress=False)

    def by_cell(run_dir: Path) -> dict[int, dict]:
        lines = (run_dir / "results.jsonl").read_text().splitlines()
        return {r["cell"]: r for r in map(json.loads, lines)}

    a, b = by_cell(on), by_cell(off)
    assert a.keys() == b.keys()
    top = max(r["layer"] for r in a.values())
    for cell, row in a.items():
        assert row["p_clean"] == pytest.approx(b[cell]["p_clean"], abs=1e-6)
        assert row["target_prob"] == pytest.approx(b[cell]["target_prob"], abs=1e-6)
        if row["layer"] == top:  # the source's own last state restored: its own logits
            assert row["target_prob"] == pytest.approx(row["p_clean"], abs=1e-6)
