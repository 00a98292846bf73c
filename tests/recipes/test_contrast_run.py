"""`contrast:` steering under `ivx run` (issue #27): it used to validate, then fail with an
AssertionError after start-up. The run's patched logits equal a hand-written hook that adds
coefficient × the mean activation difference computed by hand from `output_hidden_states`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ivx.model import loading as models
from tests.engine.test_patching_oracles import BASE, BLOCKS, cell_logits, plain_logits, run_config

PAIRS = [
    {"positive": "When Mary went to the store", "negative": "When John went to the park"},
    {"positive": "Mary gave a drink to", "negative": "John gave a ball to"},
]


def _block_output(lm: models.LoadedModel, text: str, layer: int) -> torch.Tensor:
    """Block `layer`'s output for every token of `text`: [seq, d] (hidden_states[layer + 1])."""
    ids = torch.tensor([lm.tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        return lm.model(ids, output_hidden_states=True).hidden_states[layer + 1][0]


@pytest.mark.parametrize(
    ("arch", "position", "shortcuts"),
    [("gpt2", "last", True), ("llama", "mean", False), ("gpt_neox", "last", False)],
)
def test_contrast_addition_equals_handwritten_hook(
    arch: str, position: str, shortcuts: bool, tiny_model_dir, tmp_path: Path
) -> None:
    model_dir = tiny_model_dir(arch)
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    off = {k: False for k in ("prefix_reuse", "layer_reuse", "defer_head", "trim_final")}
    run_dir = run_config(
        tmp_path,
        model_dir,
        {
            "sweep": {"position": [3, -1]},
            "interventions": [
                {
                    "kind": "addition",
                    "component": "block_output",
                    "layer": 0,
                    "position": "$position",
                    "contrast": {"file": "pairs.jsonl", "position": position},
                    "coefficient": 2.5,
                }
            ],
            **({} if shortcuts else {"batch": off}),
        },
    )
    lm = models.load(str(model_dir))

    def pick(text: str) -> torch.Tensor:
        acts = _block_output(lm, text, 0)
        return acts[-1] if position == "last" else acts.mean(0)

    vector = torch.stack([pick(p["positive"]) - pick(p["negative"]) for p in PAIRS]).mean(0)  # [d]
    got = cell_logits(run_dir)
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        at = row["position"]

        def add(module, args, output, at=at):  # noqa: ANN001, ANN202
            hidden = (output[0] if isinstance(output, tuple) else output).clone()
            hidden[:, at] += 2.5 * vector
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        expected = plain_logits(lm, BASE, BLOCKS[arch].format(0), add)
        torch.testing.assert_close(got[row["cell"]].float().reshape(-1), expected, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(expected, plain_logits(lm, BASE), atol=1e-3)  # the vector does something


def test_shipped_steering_run_config_measures_the_effect(tmp_path: Path) -> None:
    from ivx.recipes import run as experiment

    root = Path(__file__).resolve().parents[2]
    run_dir = experiment.run(
        root / "configs" / "steering_run.yaml",
        ("output.plots=false", "sweep.coef=[0.0,3.0]", "controls=[placebo]"),
        out_root=str(tmp_path),
        progress=False,
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    real = {e["coef"]: e["logit_diff"] for e in summary["grid"]}
    placebo = {e["coef"]: e["logit_diff"] for e in summary["controls"]["placebo"]["grid"]}
    assert real[3.0] > real[0.0] + 10.0  # steered towards Brimara
    assert placebo[0.0] == pytest.approx(real[0.0])  # coefficient 0: nothing added either way
    assert real[3.0] - placebo[3.0] > 10.0  # a norm-matched random vector does not steer
