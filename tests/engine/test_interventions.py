"""Each non-trainable intervention kind equals the same edit written by hand as a forward hook."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from ivx.core import interventions
from ivx.model import loading as models
from ivx.recipes import run as experiment

BASE = "When Mary and John went to the store , John gave a drink to"
SOURCE = "When Mary and John went to the store , Mary gave a drink to"
LAYER, POS = 1, [3, -1]


def run(tmp_path: Path, model_dir: Path, iv: dict, **extra) -> Path:
    data = {
        "name": "iv",
        "model": {"name": str(model_dir)},
        "prompts": [{"base": BASE, "source": SOURCE, "target": " Mary", "foil": " John"}],
        "interventions": [{"component": "block_output", "layer": LAYER, "position": POS, **iv}],
        "metrics": ["target_prob", "kl"],
        "output": {"plots": False},
        **extra,
    }
    path = tmp_path / "iv.yaml"
    path.write_text(yaml.safe_dump(data))
    return experiment.run(path, out_root=str(tmp_path / "runs"), progress=False)


def hand(lm, edit) -> torch.Tensor:
    """Base-run logits with `edit(h_slice, source_slice) -> new` applied to block LAYER at POS."""
    return hand_at(lm, LAYER, edit)


def hand_at(lm, layer: int, edit) -> torch.Tensor:
    """Base-run logits with `edit(h_slice, source_slice) -> new` applied to block `layer` at POS."""
    ids = lambda t: torch.tensor([lm.tokenizer(t, add_special_tokens=False)["input_ids"]])  # noqa: E731
    block = lm.model.transformer.h[layer]
    store = {}
    handle = block.register_forward_hook(lambda m, a, o: store.__setitem__("src", o.clone()))
    with torch.no_grad():
        lm.model(ids(SOURCE))
    handle.remove()
    n = ids(BASE).shape[1]
    pos = [p % n for p in POS]

    def hook(m, a, o):
        o = o.clone()
        o[0, pos] = edit(o[0, pos], store["src"][0, pos])
        return o

    handle = block.register_forward_hook(hook)
    try:
        with torch.no_grad():
            return lm.model(ids(BASE)).logits[0, -1]
    finally:
        handle.remove()


def cell0(run_dir: Path) -> torch.Tensor:
    return load_file(str(run_dir / "tensors.safetensors"))["cell0"]


@pytest.fixture(scope="module")
def gpt2(tiny_model_dir):
    path = tiny_model_dir("gpt2")
    return path, models.load(str(path))


@pytest.mark.parametrize(
    ("iv", "edit"),
    [
        ({"kind": "vanilla"}, lambda b, s: s),
        ({"kind": "addition", "coefficient": 0.5}, lambda b, s: b + 0.5 * s),
        ({"kind": "subtraction"}, lambda b, s: b - s),
        ({"kind": "zero"}, lambda b, s: torch.zeros_like(b)),
        ({"kind": "scale", "value": 2.5}, lambda b, s: 2.5 * b),
        ({"kind": "collect"}, lambda b, s: b),
        (
            {"kind": "vanilla", "subspace": [0, 5, 7]},
            lambda b, s: torch.where(torch.isin(torch.arange(b.shape[-1]), torch.tensor([0, 5, 7])), s, b),
        ),
        (
            {"kind": "zero", "subspace": [1, 2]},
            lambda b, s: torch.where(torch.isin(torch.arange(b.shape[-1]), torch.tensor([1, 2])), 0.0, b),
        ),
    ],
    ids=[
        "vanilla",
        "addition",
        "subtraction",
        "zero",
        "scale",
        "collect",
        "vanilla-subspace",
        "zero-subspace",
    ],
)
def test_kind_equals_hand_written_hook(iv, edit, gpt2, tmp_path: Path) -> None:
    path, lm = gpt2
    run_dir = run(tmp_path, path, iv)
    torch.testing.assert_close(cell0(run_dir), hand(lm, edit), atol=1e-5, rtol=1e-5)


def test_set_vector_from_file_and_collect_records(gpt2, tmp_path: Path) -> None:
    path, lm = gpt2
    vec = torch.linspace(-1, 1, lm.info.d_model)
    save_file({"steer.vector": vec}, str(tmp_path / "v.safetensors"))
    run_dir = run(
        tmp_path,
        path,
        {"kind": "set", "name": "steer", "vector": str(tmp_path / "v.safetensors"), "coefficient": 2.0},
    )
    torch.testing.assert_close(
        cell0(run_dir), hand(lm, lambda b, s: (2.0 * vec).expand_as(b)), atol=1e-5, rtol=1e-5
    )
    run_dir = run(tmp_path, path, {"kind": "collect", "name": "rec"})
    tensors = load_file(str(run_dir / "tensors.safetensors"))
    got = tensors[f"rec.cell0.layer{LAYER}"]
    store = {}
    handle = lm.model.transformer.h[LAYER].register_forward_hook(lambda m, a, o: store.__setitem__("h", o))
    ids = torch.tensor([lm.tokenizer(BASE, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        lm.model(ids)
    handle.remove()
    n = ids.shape[1]
    torch.testing.assert_close(got, store["h"][0, [p % n for p in POS]], atol=1e-6, rtol=1e-6)


def test_noise_kind_is_seeded_and_scaled(gpt2, tmp_path: Path) -> None:
    path, lm = gpt2
    a = cell0(run(tmp_path, path, {"kind": "noise", "value": 1.0}))
    b = cell0(run(tmp_path, path, {"kind": "noise", "value": 1.0}))
    torch.testing.assert_close(a, b)  # same seed, same draw
    c = cell0(run(tmp_path, path, {"kind": "noise", "value": 1.0}, seed=1))
    assert not torch.allclose(a, c)
    clean = hand(lm, lambda b, s: b)
    assert not torch.allclose(a, clean)
    # scaled: `value` × the embedding matrix's std, drawn by the documented reproducible generator
    # (seed + 1 + the intervention's index, prompt 0, cell 0), added by a hand-written hook
    emb_std = float(lm.model.get_input_embeddings().weight.detach().float().std())
    for seed, got in ((0, a), (1, c)):
        draw = interventions.noise(seed + 1, 0, 0, len(POS), lm.info.d_model, 1.0 * emb_std)
        torch.testing.assert_close(got, hand(lm, lambda b, s, d=draw: b + d), atol=1e-5, rtol=1e-5)
    doubled = cell0(run(tmp_path, path, {"kind": "noise", "value": 2.0}))
    draw = interventions.noise(1, 0, 0, len(POS), lm.info.d_model, 2.0 * emb_std)
    torch.testing.assert_close(doubled, hand(lm, lambda b, s: b + draw), atol=1e-5, rtol=1e-5)


def test_results_rows_are_flat_and_complete(gpt2, tmp_path: Path) -> None:
    path, lm = gpt2
    run_dir = run(tmp_path, path, {"kind": "vanilla", "layer": "$layer"}, sweep={"layer": [0, 1]})
    rows = [json.loads(x) for x in (run_dir / "results.jsonl").read_text().splitlines()]
    assert [r["layer"] for r in rows] == [0, 1]
    assert set(rows[0]) >= {"cell", "prompt_index", "layer", "target_prob", "kl", "p_clean", "p_corrupted"}
    csv_header = (run_dir / "results.csv").read_text().splitlines()[0].split(",")
    assert csv_header[:3] == ["cell", "prompt_index", "layer"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [g["layer"] for g in summary["grid"]] == [0, 1] and summary["grid"][0]["n"] == 1
    # the values, from plain forwards: "clean" is the run copied from (SOURCE), "corrupted" the base
    ids = lambda t: torch.tensor([lm.tokenizer(t, add_special_tokens=False)["input_ids"]])  # noqa: E731
    mary = lm.tokenizer(" Mary", add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():
        source_logits, base_logits = (lm.model(ids(t)).logits[0, -1] for t in (SOURCE, BASE))
    log_clean = torch.log_softmax(source_logits, -1)
    for row, entry in zip(rows, summary["grid"], strict=True):
        assert row["p_clean"] == pytest.approx(float(log_clean[mary].exp()), abs=1e-6)
        assert row["p_corrupted"] == pytest.approx(float(torch.softmax(base_logits, -1)[mary]), abs=1e-6)
        patched = hand_at(lm, row["layer"], lambda b, s: s)
        assert row["target_prob"] == pytest.approx(float(torch.softmax(patched, -1)[mary]), abs=1e-6)
        kl = float((log_clean.exp() * (log_clean - torch.log_softmax(patched, -1))).sum())
        assert row["kl"] == pytest.approx(kl, abs=1e-5)
        assert entry["target_prob"] == row["target_prob"] and entry["kl"] == row["kl"]  # n = 1
