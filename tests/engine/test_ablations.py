"""Mean and resample ablations equal hand-written hooks that compute the mean / resampled value.

Each test runs ivx on a tiny model twice (every exact shortcut on, and all off) and recomputes
every cell by hand: plain forwards with a hook that records the site (the module paths written
out here, not ivx's component table), the mean or the other record taken by hand, and a second
hook that writes it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ivx.core.errors import ConfigError
from ivx.model import loading as models
from ivx.recipes import run as experiment
from tests.methods import test_path_patching as path_patching

# four prompts of one token length (word-level tokenizer), and a longer one
PROMPTS = [
    "When Mary and John went to the store , John gave a drink to",
    "When John and Mary went to the store , Mary gave a drink to",
    "When Mary and John went to the park , Mary gave a drink to",
    "When Tom and James went to the park , Tom gave a ball to",
]
LONGER = "When Mary and John went to the store in Paris , John gave a drink to"
OFF = {"prefix_reuse": False, "layer_reuse": False, "skip_noop": False, "defer_head": False}
# hand-written module paths: the attention output projection (its input holds each head's output)
O_PROJ = {
    "gpt2": "transformer.h.{}.attn.c_proj",
    "llama": "model.layers.{}.self_attn.o_proj",
    "gpt_neox": "gpt_neox.layers.{}.attention.dense",
}
MLP = {"gpt2": "transformer.h.{}.mlp", "llama": "model.layers.{}.mlp", "gpt_neox": "gpt_neox.layers.{}.mlp"}


def run(tmp_path: Path, model_dir: Path, ivs: list[dict], batch: dict, name: str, **extra) -> Path:
    data = {
        "name": name,
        "model": {"name": str(model_dir)},
        "seed": 3,
        "prompts": [{"base": p, "target": " Mary", "foil": " John"} for p in PROMPTS],
        "interventions": ivs,
        "metrics": ["target_prob"],
        "batch": batch,
        "output": {"plots": False},
        **extra,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return experiment.run(path, out_root=str(tmp_path / "runs"), progress=False)


def cells(run_dir: Path) -> list[tuple[dict, torch.Tensor]]:
    tensors = load_file(str(run_dir / "tensors.safetensors"))
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    return [(row, tensors[f"cell{row['cell']}"]) for row in sorted(rows, key=lambda r: r["cell"])]


def ids(lm: models.LoadedModel, text: str) -> torch.Tensor:
    return torch.tensor([lm.tokenizer(text, add_special_tokens=False)["input_ids"]])


def recorded(lm: models.LoadedModel, path: str, text: str, pre: bool) -> torch.Tensor:
    """The input (pre) or output of module `path` on a plain run of `text`: [seq, width]."""
    store = {}
    module = lm.model.get_submodule(path)
    if pre:
        handle = module.register_forward_pre_hook(lambda m, a: store.__setitem__("x", a[0][0].clone()))
    else:
        handle = module.register_forward_hook(
            lambda m, a, o: store.__setitem__("x", (o[0] if isinstance(o, tuple) else o)[0].clone())
        )
    with torch.no_grad():
        lm.model(ids(lm, text))
    handle.remove()
    return store["x"]


def written(lm: models.LoadedModel, path: str, text: str, pre: bool, write) -> torch.Tensor:
    """Last-position logits of `text` with `write(x) -> new` applied to the module's input or output."""
    module = lm.model.get_submodule(path)
    if pre:
        handle = module.register_forward_pre_hook(lambda m, a: (write(a[0].clone()), *a[1:]))
    else:
        handle = module.register_forward_hook(lambda m, a, o: write(o.clone()))
    try:
        with torch.no_grad():
            return lm.model(ids(lm, text)).logits[0, -1].float()
    finally:
        handle.remove()


# gpt2 in the fast tier; llama (grouped-query attention) and gpt_neox in the slow one
ARCHS = [
    "gpt2",
    pytest.param("llama", marks=pytest.mark.slow),
    pytest.param("gpt_neox", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("shortcuts", ["on", "off"])
def test_mean_and_resample_heads_equal_hand_hooks(
    arch: str, shortcuts: str, tiny_model_dir, tmp_path: Path
) -> None:
    """Per-position mean and resample of heads 0 and 2 at layer 1 (all positions), per prompt."""
    model_dir = tiny_model_dir(arch)
    site = {"component": "head_attention_value_output", "layer": 1, "head": [0, 2], "position": "all"}
    run_dir = run(
        tmp_path,
        model_dir,
        [{"kind": "$kind", **site}],
        OFF if shortcuts == "off" else {},
        "heads",
        sweep={"kind": ["mean", "resample"]},
    )
    lm = models.load(str(model_dir))
    path = O_PROJ[arch].format(1)
    acts = [recorded(lm, path, text, pre=True) for text in PROMPTS]  # [seq, heads * hd] each
    hd = acts[0].shape[-1] // lm.model.config.num_attention_heads
    heads = [c for h in (0, 2) for c in range(h * hd, (h + 1) * hd)]
    mean = torch.stack(acts).mean(0)
    report = json.loads((run_dir / "manifest.json").read_text())["shortcuts"]
    drawn = report["ablations"]["iv0"]["resample"]
    assert len({len(a) for a in acts}) == 1
    assert (report["groups"][0]["cells_skipping_blocks"] > 0) == (shortcuts == "on")  # layer reuse ran
    for row, got in cells(run_dir):
        p = row["prompt_index"]
        value = mean
        if row["kind"] == "resample":
            other = drawn[str(p)]
            assert other == random.Random(f"ivx-resample:3:{p}").choice([i for i in range(4) if i != p])
            value = acts[other]

        def write(x: torch.Tensor, value: torch.Tensor = value) -> torch.Tensor:
            x[0][:, heads] = value[:, heads]
            return x

        torch.testing.assert_close(got, written(lm, path, PROMPTS[p], True, write), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_pooled_mean_over_a_reference_file_equals_hand_hook(
    arch: str, tiny_model_dir, tmp_path: Path
) -> None:
    """pool: all over a reference file whose records differ in length: one vector, every position."""
    model_dir = tiny_model_dir(arch)
    refs = [PROMPTS[3], LONGER]
    (tmp_path / "ref.jsonl").write_text("".join(json.dumps({"base": t}) + "\n" for t in refs))
    iv = {
        "kind": "mean",
        "component": "mlp_output",
        "layer": 0,
        "position": [1, -1],
        "pool": "all",
        "reference": {"file": "ref.jsonl"},
    }
    run_dir = run(tmp_path, model_dir, [iv], {}, "pooled")
    lm = models.load(str(model_dir))
    path = MLP[arch].format(0)
    mean = torch.cat([recorded(lm, path, t, pre=False) for t in refs]).mean(0)  # [d]
    for row, got in cells(run_dir):
        n = ids(lm, PROMPTS[row["prompt_index"]]).shape[1]

        def write(x: torch.Tensor) -> torch.Tensor:
            x[0, [1, n - 1]] = mean
            return x

        want = written(lm, path, PROMPTS[row["prompt_index"]], False, write)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_ablation_problems_are_located(tiny_model_dir, tmp_path: Path) -> None:
    """A prompt with nothing of its length to resample from, a missing reference, pattern misuse."""
    model_dir = tiny_model_dir("gpt2")
    data = {
        "name": "bad",
        "model": {"name": str(model_dir)},
        "prompts": [{"base": t, "target": " Mary"} for t in [*PROMPTS, LONGER]],
        "interventions": [
            {"kind": "resample", "component": "mlp_output", "layer": 0},
            {"kind": "mean", "component": "mlp_output", "layer": 0, "reference": {"file": "nope.jsonl"}},
            {"kind": "noise", "component": "head_attention_pattern", "layer": 0},
            {"kind": "mean", "component": "head_attention_pattern", "layer": 0, "pool": "all"},
        ],
        "metrics": ["target_prob"],
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        experiment.run(path, out_root=str(tmp_path / "runs"), progress=False)
    text = "\n".join(f"{p.path} {p.message}" for p in err.value.problems)
    assert "interventions[0].kind" in text and "prompt 4 has 16 tokens and no other record" in text
    assert "interventions[1].reference.file" in text and "nope.jsonl" in text
    assert "interventions[2].kind" in text and "'noise' does not apply to head_attention_pattern" in text
    assert "interventions[3].pool" in text
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("arch", ARCHS)
def test_mean_ablation_path_patching_equals_two_step_oracle(
    arch: str, tiny_model_dir, tmp_path: Path
) -> None:
    """A `mean` sender (layer-0 heads, mean over the two base prompts) reaching receivers only."""
    lm = models.load(str(tiny_model_dir(arch)))
    base, other = path_patching.BASE, path_patching.SOURCE
    sender = {
        "kind": "mean",
        "component": "head_attention_value_output",
        "layer": 0,
        "head": "$head",
        "position": "all",
        "receivers": [r[0] for r in path_patching.receivers(arch)],
    }
    cfg = {
        "name": "ppmean",
        "model": {"name": str(lm.path), "bos": False},
        "prompts": [{"base": t, "target": " Mary", "foil": " John"} for t in (base, other)],
        "sweep": {"head": "all"},
        "interventions": [sender],
        "metrics": ["logit_diff"],
        "output": {"root": str(tmp_path), "logits": "none", "plots": False},
    }
    path = tmp_path / "pp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_dir = experiment.run(path, progress=False, lm=lm)
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    z0 = path_patching.ARCHS[arch]["block"].format(0) + "." + path_patching.ARCHS[arch]["z"]
    mean = torch.stack([recorded(lm, z0, t, pre=True) for t in (base, other)]).mean(0)  # [seq, d]
    got = {r["head"]: r["logit_diff"] for r in rows if r["prompt_index"] == 0}
    want = {h: path_patching.oracle(lm, arch, h, sender_z=mean.unsqueeze(0)) for h in range(4)}
    assert got == pytest.approx(want, abs=1e-4)
    assert len({round(v, 3) for v in want.values()}) > 1  # the heads differ: the test can fail


@pytest.mark.parametrize("arch", ARCHS)
def test_ablation_attribution_equals_hand_gradient(arch: str, tiny_model_dir, tmp_path: Path) -> None:
    """AtP of mean- or resample-ablating each head: logit_diff + (value − z) · ∂logit_diff/∂z."""
    model_dir = tiny_model_dir(arch)
    iv = {"kind": "$kind", "component": "head_attention_value_output", "layer": 1, "head": "$head"}
    sweep = {"kind": ["mean", "resample"], "head": "all"}
    run_dir = run(
        tmp_path, model_dir, [iv], {}, "atp", method="attribution", sweep=sweep, metrics=["logit_diff"]
    )
    lm = models.load(str(model_dir))
    path = O_PROJ[arch].format(1)
    acts = [recorded(lm, path, t, pre=True) for t in PROMPTS]
    mean = torch.stack(acts).mean(0)  # [seq, d]
    drawn = json.loads((run_dir / "manifest.json").read_text())["shortcuts"]["ablations"]["iv0"]["resample"]
    mary, john = (lm.tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in (" Mary", " John"))
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    hd = mean.shape[-1] // lm.model.config.num_attention_heads
    for p, text in enumerate(PROMPTS):
        leaf = {}

        def pre(m, a):  # noqa: ANN001, ANN202
            leaf["z"] = a[0].detach().requires_grad_()
            return (leaf["z"], *a[1:])

        handle = lm.model.get_submodule(path).register_forward_pre_hook(pre)
        logits = lm.model(ids(lm, text)).logits[0, -1]
        handle.remove()
        diff = logits[mary] - logits[john]
        (grad,) = torch.autograd.grad(diff, leaf["z"])
        z = leaf["z"][0].detach()
        for kind, value in (("mean", mean), ("resample", acts[drawn[str(p)]])):
            delta = ((value - z) * grad[0]).view(z.shape[0], -1, hd).sum((0, 2))  # [heads]
            got = {r["head"]: r["logit_diff"] for r in rows if r["prompt_index"] == p and r["kind"] == kind}
            want = {h: float(diff.detach() + delta[h]) for h in range(len(delta))}
            assert got == pytest.approx(want, abs=1e-4)
    assert all(r["approximate"] for r in rows)


def test_tasks_run_alone_reproduce_the_whole_run_bit_for_bit(tiny_model_dir, tmp_path: Path) -> None:
    """Resume and Ray cut the cells into tasks: each task alone, in any order, on a fresh executor,
    gives the whole run's bits (means and draws never depend on which cells are left)."""
    from ivx.engine import executor as runner
    from ivx.recipes import backends, prepare

    data = {
        "name": "tasks",
        "model": {"name": str(tiny_model_dir("llama"))},
        "seed": 5,
        "prompts": [{"base": p, "target": " Mary"} for p in PROMPTS],
        "sweep": {"kind": ["mean", "resample"], "component": ["head_attention_pattern", "mlp_output"]},
        "interventions": [{"kind": "$kind", "component": "$component", "layer": 1, "position": [3, -1]}],
        "metrics": ["target_prob"],
        "output": {"plots": False, "logits": "last"},
    }
    path = tmp_path / "tasks.yaml"
    path.write_text(yaml.safe_dump(data))
    prep = prepare.prepare_all(path)[0]

    def outputs(executor: runner.Executor, cells: list) -> dict[int, tuple[str, bytes]]:
        with torch.inference_mode():
            return {
                o.cell.index: (json.dumps(o.row), o.logits.numpy().tobytes())
                for batch in executor.execute(cells)
                for o in batch
            }

    local = runner.Executor(prep.cfg, prep.lm, prep.prompts, prep.plan)
    local.prepare()
    whole = outputs(local, list(prep.plan.cells))
    alone: dict[int, tuple[str, bytes]] = {}
    for task in reversed(backends.tasks(local, list(prep.plan.cells), task_cells=3)):
        worker = runner.Executor(prep.cfg, prep.lm, prep.prompts, prep.plan)
        worker.prepare()
        alone.update(outputs(worker, task))
    assert alone == whole and len(whole) == 16
    assert local.report["ablations"]["iv0"]["resample"] == worker.report["ablations"]["iv0"]["resample"]
