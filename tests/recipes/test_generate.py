"""ivx generate equals a hand-written token-by-token hook loop, with and without the KV cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from ivx.cli.app import app
from ivx.config.inputs import PromptRecord
from ivx.config.schema import Experiment
from ivx.config.settings import Generate
from ivx.engine import binding, decoding
from ivx.model import components
from ivx.model import loading as models
from ivx.recipes import generate

PROMPTS = ["When Mary and John went to the store , John gave a drink to", "The Space Needle is in downtown"]
BLOCK = {"gpt2": "transformer.h.{}", "llama": "model.layers.{}"}


def hand_loop(
    lm, arch: str, text: str, vec: torch.Tensor, on: str, positions: list[int], n: int
) -> list[int]:
    """Greedy, no cache, full recompute each step; add `vec` at block 0 output at the edited positions."""
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    length = len(ids)
    out = []
    for _ in range(n):
        seq = torch.tensor([ids])

        def hook(m, a, o):
            o = (o[0] if isinstance(o, tuple) else o).clone()
            cols = []
            if on in ("prompt", "all"):
                cols += [p % length for p in positions]
            if on in ("generated", "all"):
                cols += list(range(length, seq.shape[1]))
            for c in cols:
                o[0, c] = o[0, c] + 2.0 * vec
            return o

        handle = lm.model.get_submodule(BLOCK[arch].format(0)).register_forward_hook(hook)
        try:
            with torch.no_grad():
                nxt = int(lm.model(seq).logits[0, -1].argmax())
        finally:
            handle.remove()
        ids.append(nxt)
        out.append(nxt)
    return out


def experiment(model_dir: Path, on: str, use_cache: bool, n: int, vector_file: Path) -> Experiment:
    return Experiment.model_validate(
        {
            "model": {"name": str(model_dir)},
            "prompts": [{"base": p} for p in PROMPTS],
            "interventions": [
                {
                    "kind": "addition",
                    "component": "block_output",
                    "layer": 0,
                    "position": [1, -1],
                    "on": on,
                    "vector": str(vector_file),
                    "coefficient": 2.0,
                }
            ],
            "generate": {"max_new_tokens": n, "use_cache": use_cache},
        }
    )


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("on", ["prompt", "generated", "all"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_equals_hand_written_loop(
    arch: str, on: str, use_cache: bool, tiny_model_dir, tmp_path: Path
) -> None:
    from safetensors.torch import save_file

    model_dir = tiny_model_dir(arch)
    lm = models.load(str(model_dir))
    vec = torch.randn(lm.info.d_model, generator=torch.Generator().manual_seed(1))
    save_file({"vector": vec}, str(tmp_path / "v.safetensors"))
    exp = experiment(model_dir, on, use_cache, 6, tmp_path / "v.safetensors")
    items, _ = generate.resolve(lm, exp, [PromptRecord(base=p) for p in PROMPTS], tmp_path)
    got = decoding.run_generation(lm, PROMPTS, items, exp.generate, 0)  # a batch: left padding
    for row in got:
        want = hand_loop(lm, arch, PROMPTS[row["prompt_index"]], vec, on, [1, -1], 6)
        assert row["token_ids"] == want, (on, use_cache, row["prompt_index"])
    plain = decoding.run_generation(lm, PROMPTS, [], exp.generate, 0)
    assert any(a["token_ids"] != b["token_ids"] for a, b in zip(plain, got, strict=True))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_no_intervention_equals_model_generate(arch: str, tiny_model_dir) -> None:
    lm = models.load(str(tiny_model_dir(arch)))
    settings = Generate(max_new_tokens=8)
    for text in PROMPTS:
        got = decoding.run_generation(lm, [text], [], settings, 0)[0]["token_ids"]
        ids = torch.tensor([lm.tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            ref = lm.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=8,
                do_sample=False,
                pad_token_id=lm.tokenizer.pad_token_id,
                eos_token_id=lm.tokenizer.eos_token_id,
            )
        want = ref[0, ids.shape[1] :].tolist()
        if lm.tokenizer.eos_token_id in want:  # both stop at the end-of-text token
            want = want[: want.index(lm.tokenizer.eos_token_id) + 1]
        assert got == want


def test_contrast_vector_is_activation_difference(tiny_model_dir) -> None:
    lm = models.load(str(tiny_model_dir("gpt2")))
    site = components.resolve(lm.model, lm.info, "block_output", 0)
    from ivx.config.schema import Contrast

    vec = binding.contrast_vector(
        lm, site, Contrast(positive="Mary went to", negative="John went to"), Path(".")
    )
    ids = lambda t: torch.tensor([lm.tokenizer(t, add_special_tokens=False)["input_ids"]])  # noqa: E731
    with torch.no_grad():
        a = lm.model(ids("Mary went to"), output_hidden_states=True).hidden_states[1][0, -1]
        b = lm.model(ids("John went to"), output_hidden_states=True).hidden_states[1][0, -1]
    torch.testing.assert_close(vec, a - b)


def test_steering_shifts_toy_predictions(tmp_path: Path) -> None:
    """On ivx-toy, a city-contrast vector moves most subjects' predicted city to the steered one."""
    root = Path(__file__).resolve().parents[2]
    runner = CliRunner()
    result = runner.invoke(app, ["generate", str(root / "configs" / "steering.yaml"), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    run_dir = Path(result.output.strip().splitlines()[-1])
    cfg = yaml.safe_load((root / "configs" / "steering.yaml").read_text())
    steered_city = cfg["description"].rsplit("steered city:", 1)[1].strip()
    rows = [json.loads(x) for x in (run_dir / "generations.jsonl").read_text().splitlines()]
    first = lambda text: text.split()[0] if text.split() else ""  # noqa: E731
    before = sum(first(r["unintervened"]["text"]) == steered_city for r in rows)
    after = sum(first(r["intervened"]["text"]) == steered_city for r in rows)
    assert len(rows) >= 10
    assert before <= len(rows) // 5 and after >= 0.6 * len(rows), (before, after, len(rows))
    assert (run_dir / "interventions.safetensors").is_file()


def test_sampling_is_seeded_and_stop_strings_cut(tiny_model_dir) -> None:
    lm = models.load(str(tiny_model_dir("gpt2")))
    settings = Generate(
        max_new_tokens=6, do_sample=True, temperature=1.5, top_k=20, top_p=0.9, num_return_sequences=3
    )
    a = decoding.run_generation(lm, PROMPTS, [], settings, seed=7)
    b = decoding.run_generation(lm, PROMPTS, [], settings, seed=7)
    c = decoding.run_generation(lm, PROMPTS, [], settings, seed=8)
    assert [r["token_ids"] for r in a] == [r["token_ids"] for r in b]
    assert [r["token_ids"] for r in a] != [r["token_ids"] for r in c]
    assert [r["prompt_index"] for r in a] == [0, 0, 0, 1, 1, 1]
    for row in a:  # every sampled token is inside the top-k of its step
        assert all(0 < p <= 1 for p in row["probs"])
    greedy = decoding.run_generation(lm, [PROMPTS[0]], [], Generate(max_new_tokens=6), 0)[0]
    word = greedy["text"].split()[1] if len(greedy["text"].split()) > 1 else greedy["text"].split()[0]
    stopped = decoding.run_generation(lm, [PROMPTS[0]], [], Generate(max_new_tokens=6, stop=[word]), 0)[0]
    assert word not in stopped["text"] and greedy["text"].startswith(stopped["text"].strip())
