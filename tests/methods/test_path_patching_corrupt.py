"""Path patching with `corrupt:` (noise, replace) equals a hand-written two-step oracle.

With a corruption the run patched INTO is the corrupted run (noise samples are separate runs,
averaged), the sender comes from the clean run, and every other head and MLP output is frozen at
its corrupted-run value. The oracle below does that with raw torch hooks, one sample at a time.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from ivx.core import interventions
from ivx.model import loading as models
from ivx.recipes import run as experiment
from tests.methods.test_path_patching import ARCHS, HD, hooked, receivers

RECORDS = [
    {"base": "The Eiffel Tower is in", "subject": "Eiffel Tower", "target": " Paris", "foil": " Seattle"},
    {"base": "The Space Needle is in", "subject": "Space Needle", "target": " Seattle", "foil": " Paris"},
]
SUBJECT = [1, 2]  # token positions of both subjects (word-level tokenizer, no BOS)
EMBED = {"gpt2": "transformer.wte", "llama": "model.embed_tokens"}
SIGMA, SCALE, SAMPLES, SEED = 0.5, 2.0, 3, 0
NOISE = {"kind": "noise", "positions": "subject", "sigma": SIGMA, "scale": SCALE, "samples": SAMPLES}
REPLACE = {"kind": "replace"}


def ids(lm: Any, text: str) -> torch.Tensor:
    return torch.tensor([lm.tokenizer(text, add_special_tokens=False)["input_ids"]])


def first(lm: Any, word: str) -> int:
    return lm.tokenizer(word, add_special_tokens=False)["input_ids"][0]


def corrupted_inputs(lm: Any, prompt: int, kind: str) -> list[tuple[torch.Tensor, Callable | None]]:
    """The corrupted run(s) of a prompt, by hand: (input ids, embedding output hook) per sample."""
    if kind == "replace":  # two subjects of equal length: each prompt gets the other's
        return [(ids(lm, RECORDS[1 - prompt]["base"]), None)]
    d = lm.model.get_input_embeddings().weight.shape[1]
    out = []
    for s in range(SAMPLES):
        noise = interventions.noise(SEED, prompt, s, len(SUBJECT), d, SCALE * SIGMA)

        def add(x: torch.Tensor, noise: torch.Tensor = noise) -> torch.Tensor:
            x = x.clone()
            x[0, SUBJECT] += noise.to(x.dtype)
            return x

        out.append((ids(lm, RECORDS[prompt]["base"]), add))
    return out


def oracle(lm: Any, arch: str, prompt: int, kind: str, head: int) -> float:
    """Sample-averaged logit difference of the two-step path patch of layer 0's head `head`."""
    spec, n = ARCHS[arch], lm.info.n_layers
    zs = [spec["block"].format(i) + "." + spec["z"] for i in range(n)]
    mlps = [spec["block"].format(i) + "." + spec["mlp"] for i in range(n)]
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Callable:
        return lambda x: seen.__setitem__(name, x.clone()) or x

    hooked(lm.model, ids(lm, RECORDS[prompt]["base"]), {zs[0]: keep("clean_z")}, {})
    sender = slice(head * HD, (head + 1) * HD)
    values = []
    for corrupt_ids, embed in corrupted_inputs(lm, prompt, kind):
        post0 = {EMBED[arch]: embed} if embed else {}
        hooked(lm.model, corrupt_ids, {z: keep(z) for z in zs}, {**post0, **{m: keep(m) for m in mlps}})
        frozen = {k: v.clone() for k, v in seen.items() if k != "clean_z"}

        def freeze_z(x: torch.Tensor, z: str) -> torch.Tensor:
            new = frozen[z].clone()
            if z == zs[0]:
                new[..., sender] = seen["clean_z"][..., sender]
            return new

        pre: dict[str, Callable] = {z: (lambda x, z=z: freeze_z(x, z)) for z in zs}
        post: dict[str, Callable] = {**post0, **{m: (lambda x, m=m: frozen[m].clone()) for m in mlps}}
        recorded: dict[str, torch.Tensor] = {}
        for _, module, side, _, _ in receivers(arch):
            table = pre if side == "in" else post
            before = table.get(module, lambda x: x)
            table[module] = lambda x, b=before, m=module: recorded.__setitem__(m, b(x).clone()) or b(x)
        hooked(lm.model, corrupt_ids, pre, post)
        write_pre: dict[str, Callable] = {}
        write_post: dict[str, Callable] = dict(post0)
        for _, module, side, cols, where in receivers(arch):

            def write(x: torch.Tensor, m: str = module, cols: list[int] = cols, where: str = where) -> Any:
                new = x.clone()
                at = slice(None) if where == "all" else slice(-1, None)
                new[:, at, cols] = recorded[m][:, at, cols]
                return new

            table = write_pre if side == "in" else write_post
            before = table.get(module)
            table[module] = write if before is None else (lambda x, a=before, b=write: b(a(x)))
        logits = hooked(lm.model, corrupt_ids, write_pre, write_post)[0]
        target, foil = first(lm, RECORDS[prompt]["target"]), first(lm, RECORDS[prompt]["foil"])
        values.append(float(logits[target] - logits[foil]))
    return sum(values) / len(values)


def run(lm: Any, tmp: Path, corrupt: dict, interventions_: list[dict], sweep: dict, **extra: Any) -> Path:
    """Run a config on a loaded model; the run directory."""
    cfg = {
        "name": "ppc",
        "model": {"name": str(lm.path), "bos": False},
        "seed": SEED,
        "prompts": RECORDS,
        "corrupt": corrupt,
        "sweep": sweep,
        "interventions": interventions_,
        "metrics": ["logit_diff", "indirect_effect"],
        "output": {"root": str(tmp), "logits": "none", "plots": False},
        **extra,
    }
    path = tmp / f"ppc{len(list(tmp.glob('*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return experiment.run(path, progress=False, lm=lm)


def rows_of(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    return sorted(rows, key=lambda r: r["cell"])


def sender(arch: str, **fields: Any) -> dict:
    return {
        "kind": "vanilla",
        "component": "head_attention_value_output",
        "layer": 0,
        "head": "$head",
        "position": "all",
        "receivers": [r[0] for r in receivers(arch)],
        **fields,
    }


@pytest.mark.parametrize("kind", ["noise", "replace"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_corrupted_path_patch_equals_the_oracle(arch: str, kind: str, tiny_model_dir, tmp_path: Path) -> None:
    """Every layer-0 head of both prompts as sender: ivx equals the hand-written oracle to 1e-5."""
    lm = models.load(str(tiny_model_dir(arch)))
    corrupt = NOISE if kind == "noise" else REPLACE
    run_dir = run(lm, tmp_path, corrupt, [sender(arch)], {"head": "all"})
    rows = rows_of(run_dir)
    assert [(r["prompt_index"], r["head"]) for r in rows] == [(p, h) for p in (0, 1) for h in range(4)]
    table = {p["prompt_index"]: p for p in json.loads((run_dir / "summary.json").read_text())["prompts"]}
    moved = 0.0
    for row in rows:
        want = oracle(lm, arch, row["prompt_index"], kind, row["head"])
        assert row["logit_diff"] == pytest.approx(want, abs=1e-5)
        moved = max(moved, abs(want - table[row["prompt_index"]]["corrupted"]["logit_diff"]))
    assert moved > 1e-3  # not vacuous: some sender moves the metric away from the corrupted run


@pytest.mark.parametrize("corrupt", [NOISE, REPLACE], ids=["noise", "replace"])
def test_last_mlp_to_final_residual_is_exact_patching(corrupt: dict, tiny_model_dir, tmp_path: Path) -> None:
    """Sender = the last MLP, receiver = the final residual stream: nothing lies between them, so with
    a corruption too the path patch equals exact patching of that MLP (clean into corrupted)."""
    lm = models.load(str(tiny_model_dir("gpt2")))
    with torch.no_grad():  # a tiny random MLP barely moves the logits: make its effect visible
        for param in lm.model.get_submodule("transformer.h.1.mlp").parameters():
            param.mul_(4.0)
    site = {"kind": "vanilla", "component": "mlp_output", "layer": -1, "position": "$position"}
    direct = rows_of(run(lm, tmp_path, corrupt, [site], {"position": "all"}))
    final = [{"component": "block_output", "layer": -1, "position": "all"}]
    paths = rows_of(run(lm, tmp_path, corrupt, [{**site, "receivers": final}], {"position": "all"}))
    assert len(direct) == len(paths) == 10
    for d, p in zip(direct, paths, strict=True):
        assert p["logit_diff"] == pytest.approx(d["logit_diff"], abs=1e-5)
        assert p["indirect_effect"] == pytest.approx(d["indirect_effect"], abs=1e-6)
    assert max(abs(d["logit_diff"] - direct[0]["logit_diff"]) for d in direct) > 2e-4


def test_sender_before_the_corruption_changes_nothing(tiny_model_dir, tmp_path: Path) -> None:
    """Causal attention: position 0 precedes the noised subject, so its clean and corrupted values
    agree and the path patch leaves every metric at the corrupted run's value."""
    lm = models.load(str(tiny_model_dir("llama")))
    run_dir = run(lm, tmp_path, NOISE, [sender("llama", position=0)], {"head": "all"})
    table = {p["prompt_index"]: p for p in json.loads((run_dir / "summary.json").read_text())["prompts"]}
    rows = rows_of(run_dir)
    assert len(rows) == 8
    for row in rows:
        corrupted = table[row["prompt_index"]]["corrupted"]
        assert row["logit_diff"] == pytest.approx(corrupted["logit_diff"], abs=1e-5)
        assert row["indirect_effect"] == pytest.approx(0.0, abs=1e-6)
        assert row["p_corrupted"] == corrupted["target_prob"]


@pytest.mark.parametrize(
    ("corrupt", "source", "code"),
    [(None, "base", 2), (None, "source", 0), (NOISE, "base", 0), (REPLACE, "auto", 0)],
)
def test_sender_source_rule_depends_on_the_corruption(
    corrupt: dict | None, source: str, code: int, tmp_path: Path
) -> None:
    """Without `corrupt` the base run is the run patched into, so the sender must come from the
    source prompt; with one the clean base run is a valid sender source. Errors: file:line, field."""
    from typer.testing import CliRunner

    from ivx.cli.app import app

    root = Path(__file__).resolve().parents[2]
    data = yaml.safe_load((root / "configs" / "path_patching.yaml").read_text())
    data["prompts"]["file"] = str(root / "configs" / "data" / "ioi.jsonl")
    data["interventions"][0]["source"] = source
    if corrupt is not None:  # the facts have subjects to corrupt (and no source prompts)
        data.update(corrupt=corrupt, metrics=["indirect_effect"])
        data["prompts"] = {"file": str(root / "configs" / "data" / "facts.jsonl"), "limit": 4}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    result = CliRunner().invoke(app, ["validate", str(path)], env={"COLUMNS": "400"})
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    if code:
        assert f"{path}:" in result.output and "interventions[0].source" in result.output
        assert "without `corrupt`" in result.output


def test_parallel_block_last_heads_to_final_residual_is_exact_patching(
    tiny_model_dir, tmp_path: Path
) -> None:
    """gpt_neox's parallel block: the last layer's MLP reads the block input, not the attention's
    output, so a last-layer head's path to the final residual stream is its whole effect: the path
    patch equals exact patching of that head (clean into the noised run) for every head."""
    lm = models.load(str(tiny_model_dir("gpt_neox")))
    with torch.no_grad():  # make the tiny random heads' effect visible
        lm.model.get_submodule("gpt_neox.layers.1.attention.dense").weight.mul_(4.0)
    head = {
        "kind": "vanilla",
        "component": "head_attention_value_output",
        "layer": -1,
        "head": "$head",
        "position": "all",
    }
    direct = rows_of(run(lm, tmp_path, NOISE, [head], {"head": "all"}))
    final = [{"component": "block_output", "layer": -1, "position": "all"}]
    paths = rows_of(run(lm, tmp_path, NOISE, [{**head, "receivers": final}], {"head": "all"}))
    assert len(direct) == len(paths) == 8
    for d, p in zip(direct, paths, strict=True):
        assert p["logit_diff"] == pytest.approx(d["logit_diff"], abs=1e-5)
    assert max(abs(d["logit_diff"] - direct[0]["logit_diff"]) for d in direct) > 2e-4
