"""Final-block trimming (`ivx.trim`): the last block's output projection and MLP run on the last position only.

Checked three ways: the trimmed model's last-position logits equal the plain forward's and the
trimmed modules really saw one position; sweeps over every component of the last layer (patches
before, inside and after the trimmed modules) give the numbers of the all-shortcuts-off run; and
a trimming that would change numbers is caught by the pre-run probe and switched off.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ivx.engine import shortcuts, trim
from ivx.model import loading as models
from ivx.plan.schedule import Cost
from ivx.recipes import run as experiment

OFF = {"prefix_reuse": False, "layer_reuse": False, "skip_noop": False, "defer_head": False}
FACTS = [
    {"base": f"In the old records , {s} is located in the city of", "subject": s, "target": t}
    for s, t in (("Space Needle", " Seattle"), ("Eiffel Tower", " Paris"))
]
ARCHS = ["gpt2", "llama", "gpt_neox", "opt", "gemma", "phi3", "gptj"]


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gpt_neox", "opt", "phi3"])
def test_trimmed_forward_keeps_the_last_position(arch: str, tiny_model_dir) -> None:
    lm = models.load(str(tiny_model_dir(arch)))
    ids = torch.tensor([[3, 7, 11, 5, 9, 2, 8], [4, 4, 6, 1, 10, 12, 3]])
    (o_proj, _), (mlp_in, _) = trim.regions(lm.model)
    seen: dict[str, tuple[int, ...]] = {}
    with torch.inference_mode():
        plain = lm.model(input_ids=ids).logits[:, -1]
        with trim.trimmed(lm):  # recorders registered inside run after the cut
            handles = [
                lm.model.get_submodule(name).register_forward_pre_hook(
                    lambda m, a, name=name: seen.__setitem__(name, tuple(a[0].shape))
                )
                for name in (o_proj, mlp_in)
            ]
            try:
                cut = lm.model(input_ids=ids).logits[:, -1]
            finally:
                for h in handles:
                    h.remove()
    torch.testing.assert_close(cut, plain, atol=2e-5, rtol=1e-5)
    assert seen[o_proj][:2] == (2, 1)  # the output projection ran on one position per row
    if arch != "opt":  # OPT's MLP works on flattened [b*s, d] rows: left untrimmed
        assert seen[mlp_in][:2] == (2, 1)
    else:
        assert seen[mlp_in][0] == 2 * ids.shape[1]


def _sweep(model_dir: Path, components: list[str], batch: dict | None = None) -> dict:
    return {
        "name": "trim",
        "model": {"name": str(model_dir)},
        "prompts": FACTS,
        "corrupt": {"kind": "noise", "positions": "subject", "samples": 2},
        "sweep": {"component": components, "position": "all"},
        "interventions": [
            {"kind": "vanilla", "component": "$component", "layer": -1, "position": "$position"},
        ],
        "metrics": ["target_prob", "indirect_effect"],
        "output": {"plots": False, "logits": "last"},
        "batch": batch or {},
    }


def _run(tmp_path: Path, name: str, body: dict) -> tuple[dict, dict, list[dict]]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body))
    run_dir = experiment.run(path, out_root=str(tmp_path / name), progress=False)
    rows = [json.loads(x) for x in (run_dir / "results.jsonl").read_text().splitlines()]
    return (
        json.loads((run_dir / "manifest.json").read_text()),
        load_file(str(run_dir / "tensors.safetensors")),
        sorted(rows, key=lambda r: r["cell"]),
    )


LAST_LAYER = [
    "block_input",
    "attention_input",
    "value_output",
    "attention_value_output",
    "attention_output",
    "residual_mid",
    "mlp_input",
    "mlp_activation",
    "mlp_output",
    "block_output",
]


@pytest.mark.parametrize("arch", ARCHS)
def test_last_layer_patches_change_no_number(
    arch: str, tiny_model_dir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every component of the last layer restored at every position: trimmed = untrimmed = all off."""
    monkeypatch.setattr(shortcuts, "estimate", lambda lm: Cost(block=1e-9, token=1.0))
    lm = models.load(str(tiny_model_dir(arch)))
    components = [c for c in LAST_LAYER if c in lm.info.components]
    manifest, fast, rows = _run(tmp_path, "on", _sweep(tiny_model_dir(arch), components))
    _, untrimmed, _ = _run(
        tmp_path, "untrimmed", _sweep(tiny_model_dir(arch), components, {"trim_final": False})
    )
    _, reference, ref_rows = _run(tmp_path, "off", _sweep(tiny_model_dir(arch), components, OFF))
    assert manifest["shortcuts"]["shortcuts"]["trim_final"] == {"on": True}
    assert reference.keys() == fast.keys() and len(fast) > 2 * len(components) * 13
    for key in reference:
        torch.testing.assert_close(fast[key], reference[key], atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(fast[key], untrimmed[key], atol=2e-5, rtol=1e-5)
    moved = max(
        float((fast[f"cell{r['cell']}"] - fast[f"corrupted.prompt{r['prompt_index']}"].mean(0)).abs().max())
        for r in rows
    )
    assert moved > 1e-3  # restored last-layer states move the logits ~50x the tolerance: not vacuous
    for a, b in zip(rows, ref_rows, strict=True):
        assert a["target_prob"] == pytest.approx(b["target_prob"], abs=2e-6)


@pytest.mark.parametrize("breakage", ["wrong_numbers", "error"])
def test_a_trimming_that_breaks_is_switched_off(
    breakage: str, tiny_model_dir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A release whose modules do not trim as assumed: silently wrong numbers (the MLP fed the first
    position instead of the last) or an error (the attention itself cut). The probe switches it off."""
    real_regions, real_cut = trim.regions, trim._cut
    if breakage == "error":
        monkeypatch.setattr(
            trim, "regions", lambda model: [(real_regions(model)[0][0].rsplit(".", 1)[0],) * 2]
        )
    else:

        def first_position(state):  # type: ignore[no-untyped-def]
            pre = real_cut(state)

            def hook(module, args, kwargs):  # type: ignore[no-untyped-def]
                out = pre(module, args, kwargs)
                return out if out is None else ((args[0][:, :1], *args[1:]), kwargs)

            return hook

        monkeypatch.setattr(trim, "_cut", first_position)
    body = _sweep(tiny_model_dir("llama"), ["block_output", "mlp_output"])
    manifest, fast, _ = _run(tmp_path, "broken", body)
    monkeypatch.setattr(trim, "regions", real_regions)
    monkeypatch.setattr(trim, "_cut", real_cut)
    _, reference, _ = _run(
        tmp_path, "off", _sweep(tiny_model_dir("llama"), ["block_output", "mlp_output"], OFF)
    )
    state = manifest["shortcuts"]["shortcuts"]
    why = {
        "wrong_numbers": "results differ from the plain forward",
        "error": "check failed with RuntimeError",
    }
    assert not state["trim_final"]["on"] and why[breakage] in state["trim_final"]["why"], state
    assert all(state[n]["on"] for n in ("prefix_reuse", "layer_reuse", "defer_head", "skip_noop"))
    for key in reference:
        torch.testing.assert_close(fast[key], reference[key], atol=2e-5, rtol=1e-5)
    lines = shortcuts.describe(manifest["shortcuts"])
    assert any(line.startswith("warning: final-block trimming is off") for line in lines)


def test_trimming_needs_the_deferred_head(tiny_model_dir, tmp_path: Path) -> None:
    manifest, _, _ = _run(
        tmp_path, "nodefer", _sweep(tiny_model_dir("gpt2"), ["block_output"], {"defer_head": False})
    )
    why = "off in config (batch.defer_head: trimming needs the deferred head)"
    assert manifest["shortcuts"]["shortcuts"]["trim_final"] == {"on": False, "why": why}
