"""generate and train go through the one resolver: every non-trainable kind (noise too), layer
lists, windows and sweeps in generate equal hand-written hook loops; user errors are one
`file:line  dotted.path  message` line, identical to `ivx validate --for ...`, exit code 2."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from ivx.cli.app import app
from ivx.config.inputs import PromptRecord
from ivx.config.schema import Experiment
from ivx.core import interventions
from ivx.engine import decoding
from ivx.model import loading as models
from ivx.recipes import generate

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["When Mary and John went to the store , John gave a drink to", "The Space Needle is in downtown"]
runner = CliRunner()
Edit = Callable[[torch.Tensor, int], None]  # (block output [seq, d], prompt length) -> in place


def hand_loop(lm: models.LoadedModel, ids: list[int], edits: dict[int, Edit], n: int) -> list[int]:
    """Greedy, no cache, full recompute each step; `edits[layer]` rewrites GPT-2 block `layer`'s output."""
    ids, length, out = list(ids), len(ids), []
    for _ in range(n):

        def hook(edit: Edit) -> Callable[..., torch.Tensor]:
            def fn(module: object, args: object, output: object) -> torch.Tensor:
                hidden = (output[0] if isinstance(output, tuple) else output).clone()  # type: ignore[index]
                edit(hidden[0], length)
                return hidden

            return fn

        handles = [lm.model.transformer.h[layer].register_forward_hook(hook(e)) for layer, e in edits.items()]
        try:
            with torch.no_grad():
                nxt = int(lm.model(torch.tensor([ids])).logits[0, -1].argmax())
        finally:
            for handle in handles:
                handle.remove()
        ids.append(nxt)
        out.append(nxt)
    return out


def experiment(model_dir: Path, interventions_: list[dict], use_cache: bool = True, n: int = 6) -> Experiment:
    return Experiment.model_validate(
        {
            "model": {"name": str(model_dir)},
            "prompts": [{"base": p} for p in PROMPTS],
            "interventions": interventions_,
            "generate": {"max_new_tokens": n, "use_cache": use_cache},
        }
    )


def generated(lm: models.LoadedModel, exp: Experiment, tmp_path: Path) -> list[list[int]]:
    items, _ = generate.resolve(lm, exp, [PromptRecord(base=p) for p in PROMPTS], tmp_path)
    assert exp.generate is not None
    rows = decoding.run_generation(lm, PROMPTS, items, exp.generate, 0)  # a batch: left padding
    return [row["token_ids"] for row in sorted(rows, key=lambda r: r["prompt_index"])]


@pytest.mark.parametrize("use_cache", [True, False])
def test_noise_generates_and_equals_a_hand_written_loop(
    use_cache: bool, tiny_model_dir, tmp_path: Path
) -> None:
    lm = models.load(str(tiny_model_dir("gpt2")))
    iv = {"kind": "noise", "layer": 0, "position": [1, -1], "on": "all", "value": 2.0}
    got = generated(lm, experiment(tiny_model_dir("gpt2"), [iv], use_cache), tmp_path)
    std = 2.0 * float(lm.model.get_input_embeddings().weight.detach().float().std())
    d = lm.info.d_model
    for i, text in enumerate(PROMPTS):

        def add_noise(hidden: torch.Tensor, length: int, i: int = i) -> None:
            # documented draw: seed + 1 + intervention index, record, unpadded column
            columns = [1, length - 1, *range(length, hidden.shape[0])]
            for col in columns:
                hidden[col] += interventions.noise(0 + 1 + 0, i, col, 1, d, std)[0]

        ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert got[i] == hand_loop(lm, ids, {0: add_noise}, 6), (i, use_cache)
        assert got[i] != hand_loop(lm, ids, {}, 6)  # the noise changed the continuation


def test_layer_list_and_window_edit_every_layer(tiny_model_dir, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    lm = models.load(str(tiny_model_dir("gpt2")))
    vec = torch.randn(lm.info.d_model, generator=torch.Generator().manual_seed(3))
    save_file({"vector": vec}, str(tmp_path / "v.safetensors"))
    iv = {"kind": "addition", "position": -1, "vector": str(tmp_path / "v.safetensors"), "coefficient": 0.1}
    listed = generated(lm, experiment(tiny_model_dir("gpt2"), [{**iv, "layer": [0, 1]}]), tmp_path)
    window = generated(lm, experiment(tiny_model_dir("gpt2"), [{**iv, "layer": 1, "window": 2}]), tmp_path)
    first = generated(lm, experiment(tiny_model_dir("gpt2"), [{**iv, "layer": 0}]), tmp_path)

    def add(hidden: torch.Tensor, length: int) -> None:
        hidden[length - 1] += 0.1 * vec

    for i, text in enumerate(PROMPTS):
        ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert listed[i] == window[i] == hand_loop(lm, ids, {0: add, 1: add}, 6)
        assert first[i] == hand_loop(lm, ids, {0: add}, 6)
    assert listed != first  # the second layer was not silently dropped


def test_activation_patching_config_generates_per_grid_point(tmp_path: Path) -> None:
    sets = [
        "prompts.limit=2",
        "sweep.component=[block_output]",
        "sweep.layer=[1, 2]",
        "sweep.position=[last]",
    ]
    args = ["generate", str(ROOT / "configs" / "activation_patching.yaml"), "--out", str(tmp_path)]
    result = runner.invoke(
        app, [*args, *(x for s in [*sets, "generate.max_new_tokens=3"] for x in ("--set", s))]
    )
    assert result.exit_code == 0, result.output
    rows = [
        json.loads(x) for x in (Path(result.output.strip().splitlines()[-1]) / "generations.jsonl").open()
    ]
    assert [(r["point"]["layer"], r["prompt_index"]) for r in rows] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    lm = models.load("ivx-toy")
    records = [json.loads(x) for x in (ROOT / "configs" / "data" / "ioi.jsonl").open()][:2]
    for row in rows:
        layer, record = row["point"]["layer"], records[row["prompt_index"]]
        source = torch.tensor([lm.tokenizer(record["source"], add_special_tokens=False)["input_ids"]])
        with torch.no_grad():  # block_output[l] is hidden_states[l + 1]
            restored = lm.model(source, output_hidden_states=True).hidden_states[layer + 1][0, -1]

        def patch(hidden: torch.Tensor, length: int, restored: torch.Tensor = restored) -> None:
            hidden[length - 1] = restored

        ids = lm.tokenizer(record["base"], add_special_tokens=False)["input_ids"]
        assert row["intervened"]["token_ids"] == hand_loop(lm, ids, {layer: patch}, 3), row["point"]


def write(tmp_path: Path, model_dir: Path, iv: dict) -> Path:
    path = tmp_path / "g.yaml"
    data = {"model": {"name": str(model_dir)}, "prompts": [{"base": PROMPTS[0]}], "interventions": [iv]}
    path.write_text(yaml.safe_dump({**data, "generate": {"max_new_tokens": 2}}, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("iv", "field"),
    [
        ({"kind": "vanilla", "position": "last", "on": "generated"}, "on"),
        ({"kind": "vanilla", "position": "last", "sever": "mlp_output"}, "sever"),
        ({"kind": "zero", "layer": 7, "position": "last"}, "layer"),
        ({"kind": "zero", "layer": 0, "position": 40}, "position"),
    ],
)
def test_generate_errors_are_file_line_and_match_validate(
    iv: dict, field: str, tiny_model_dir, tmp_path: Path
) -> None:
    path = write(tmp_path, tiny_model_dir("gpt2"), iv)
    result = runner.invoke(app, ["generate", str(path), "--out", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    line = result.output.splitlines()[0]
    assert line.startswith(f"{path}:") and f"  interventions[0].{field}  " in line, line
    checked = runner.invoke(app, ["validate", str(path), "--for", "generate"])
    assert checked.exit_code == 2 and checked.output.splitlines()[0] == line
    assert not (tmp_path / "runs").exists()  # nothing was run


def test_every_fixed_kind_runs_through_ivx_generate(tiny_model_dir, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model_dir = tiny_model_dir("gpt2")
    save_file({"vector": torch.ones(32)}, str(tmp_path / "v.safetensors"))
    kinds = [{"kind": k} for k in ("vanilla", "addition", "subtraction", "zero", "noise", "collect")] + [
        {"kind": "scale", "value": 0.5},
        {"kind": "set", "vector": str(tmp_path / "v.safetensors")},
    ]
    for iv in kinds:
        path = write(tmp_path, model_dir, {**iv, "layer": 1, "position": "last"})
        result = runner.invoke(app, ["generate", str(path), "--out", str(tmp_path / "runs")])
        assert result.exit_code == 0, (iv, result.output)


def test_validate_catches_what_run_fails_on_for_a_training_config(tmp_path: Path) -> None:
    das = ROOT / "configs" / "das.yaml"
    line = next(i for i, x in enumerate(das.read_text().splitlines(), 1) if "low_rank_rotated_space" in x)
    checked = runner.invoke(app, ["validate", str(das)])
    assert checked.exit_code == 2, checked.output
    assert checked.output.startswith(
        f"{das}:{line}  interventions[0].bundle  low_rank_rotated_space is trainable"
    )
    ran = runner.invoke(app, ["run", str(das), "--out", str(tmp_path)])
    assert ran.exit_code == 2 and ran.output.splitlines()[0] == checked.output.splitlines()[0], ran.output
    assert not list(tmp_path.iterdir())  # no run directory, no failed run
    assert runner.invoke(app, ["validate", str(das), "--for", "train"]).exit_code == 0


def test_train_errors_keep_file_line(tmp_path: Path) -> None:
    das = ROOT / "configs" / "das.yaml"
    # without low_rank_dimension (which a vanilla kind would not read: its own problem)
    text = das.read_text().replace("  low_rank_dimension: [32]\n", "")
    text = text.replace("data/city_swap.jsonl", str(das.parent / "data" / "city_swap.jsonl"))
    plain = tmp_path.parent / "das_plain.yaml"
    plain.write_text(text.replace("    low_rank_dimension: $low_rank_dimension\n", ""))
    line = next(i for i, x in enumerate(plain.read_text().splitlines(), 1) if "low_rank_rotated_space" in x)
    result = runner.invoke(
        app, ["train", str(plain), "--set", "interventions.0.kind=vanilla", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.output.startswith(
        f"{plain}:{line}  interventions[0].kind  ivx train trains a trainable kind"
    )
    result = runner.invoke(app, ["train", str(das), "--set", "sweep.layer=[2, 9]", "--out", str(tmp_path)])
    assert (
        result.exit_code == 2
        and f"{das}:" in result.output
        and "  sweep.layer[1]  $layer = 9 (bound to `layer`): layer 9 is out of range" in result.output
    )
    missing = runner.invoke(app, ["train", "--resume", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and missing.output.strip().splitlines() == [
        f"error: {tmp_path / 'nope'} is not an ivx run directory (no manifest.json)"
    ]
    assert not list(tmp_path.iterdir())


def test_push_and_save_of_a_wrong_path_are_user_errors(tmp_path: Path) -> None:
    for args in (
        ["push", str(tmp_path), "--repo", "user/name", "--dry-run"],
        ["save", str(tmp_path), "--out", str(tmp_path / "b")],
        ["generate"],  # neither CONFIG nor quick mode
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, (args, result.output)
        assert result.output.startswith("error: ") and "Traceback" not in result.output
