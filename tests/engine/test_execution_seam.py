"""The backend seam: `execution.execute` against hand-written hooks, and a fake backend plugged into a run."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ivx.engine import answers
from ivx.engine import executor as runner
from ivx.engine import loop as execution
from ivx.model import loading as models
from ivx.recipes import backends, prepare
from ivx.recipes import run as experiment

ROOT = Path(__file__).resolve().parents[2]
TRACE = ROOT / "configs" / "causal_trace.yaml"
BASE = "When Mary and John went to the store , John gave a drink to"
SOURCE = "When Mary and John went to the store , Mary gave a drink to"


def _config(tmp_path: Path, model_dir: Path) -> Path:
    data = {
        "name": "seam",
        "model": {"name": str(model_dir)},
        "prompts": [{"base": BASE, "source": SOURCE, "target": " Mary", "foil": " John"}],
        "metrics": ["target_prob", "logit_diff"],
        "sweep": {"layer": [0, 1], "position": [2, 9, -1]},
        "interventions": [
            {"kind": "vanilla", "component": "block_output", "layer": "$layer", "position": "$position"}
        ],
        "output": {"plots": False},
    }
    path = tmp_path / "seam.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _hooked_logits(lm: models.LoadedModel, layer: int, pos: int) -> torch.Tensor:
    """Last-position logits of BASE with block `layer`'s output at `pos` taken from SOURCE (by hand)."""
    block = lm.model.get_submodule(f"transformer.h.{layer}")

    def ids(text: str) -> torch.Tensor:
        return torch.tensor([lm.tokenizer(text, add_special_tokens=False)["input_ids"]])

    saved: dict[str, torch.Tensor] = {}

    def grab(mod, args, out):  # noqa: ANN001, ANN202
        saved["h"] = (out[0] if isinstance(out, tuple) else out).clone()

    handle = block.register_forward_hook(grab)
    try:
        with torch.no_grad():
            lm.model(ids(SOURCE))
    finally:
        handle.remove()
    source_hidden = saved["h"]

    def put(mod, args, out):  # noqa: ANN001, ANN202
        h = (out[0] if isinstance(out, tuple) else out).clone()
        h[0, pos] = source_hidden[0, pos]
        return (h, *out[1:]) if isinstance(out, tuple) else h

    handle = block.register_forward_hook(put)
    try:
        with torch.no_grad():
            return lm.model(ids(BASE)).logits[0, -1].float()
    finally:
        handle.remove()


def test_execute_equals_handwritten_hook(tiny_model_dir, tmp_path: Path) -> None:  # noqa: ANN001
    prep = prepare.prepare_all(_config(tmp_path, tiny_model_dir("gpt2")))[0]
    executor = runner.Executor(prep.cfg, prep.lm, prep.prompts, prep.plan)
    with torch.inference_mode():
        executor.prepare()
        steps = executor.steps(list(prep.plan.cells))
        outputs = [o for batch in execution.execute(executor.engine, steps) for o in batch]
    # position 2 precedes the only token where SOURCE differs (9): a no-op answered by the baseline
    assert any(s.noop for s in steps) and any(not s.noop for s in steps)
    assert sorted(o.cell.index for o in outputs) == [c.index for c in prep.plan.cells]
    mary = prep.lm.tokenizer(" Mary", add_special_tokens=False)["input_ids"][0]
    for out in outputs:
        layer, pos = out.row["layer"], out.row["position"]
        want = _hooked_logits(prep.lm, layer, pos if pos >= 0 else prep.prompts[0].length + pos)
        assert out.logits is not None
        torch.testing.assert_close(out.logits, want, atol=1e-5, rtol=1e-5)
        assert out.row["target_prob"] == pytest.approx(float(torch.softmax(want, -1)[mary]), abs=1e-6)
    # patching SOURCE's final states at the last position reproduces the source run's answer
    source_prob = executor.reference_values(0)[1]["target_prob"]
    last = [o for o in outputs if o.row["layer"] == 1 and o.row["position"] == -1]
    assert last[0].row["target_prob"] == pytest.approx(source_prob, abs=1e-5)


def _results(run_dir: Path) -> tuple[list[str], dict[str, bytes]]:
    rows = sorted((run_dir / "results.jsonl").read_text().splitlines())
    tensors = load_file(str(run_dir / "tensors.safetensors"))
    return rows, {k: v.numpy().tobytes() for k, v in tensors.items()}


def test_a_fake_backend_plugs_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sets = (
        "prompts.limit=2",
        "sweep.component=[block_output, mlp_output]",
        "output.plots=false",
        "output.logits=last",
    )
    local = experiment.run(TRACE, sets, out_root=str(tmp_path / "local"), progress=False)
    received: list[list[int]] = []

    def fake(executor, todo, settings, prep) -> Iterator[list[execution.CellOutput]]:  # noqa: ANN001
        """A backend with its own worker: tasks of 5 cells, run in reverse order."""
        worker = answers.executor(prep.cfg, prep.lm, prep.prompts, prep.plan)
        with torch.inference_mode():
            worker.prepare()
            for task in reversed(backends.tasks(executor, todo, task_cells=5)):
                received.append([c.index for c in task])
                yield [o for batch in worker.execute(task) for o in batch]

    monkeypatch.setitem(backends.BACKENDS, "local", fake)
    remote = experiment.run(TRACE, sets, out_root=str(tmp_path / "fake"), progress=False)
    flat = sorted(i for task in received for i in task)
    assert len(received) > 1 and flat == list(range(len(_results(local)[0])))
    assert _results(remote) == _results(local)
    manifest = json.loads((remote / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    groups = json.loads((local / "manifest.json").read_text())["shortcuts"]["groups"]
    assert manifest["shortcuts"]["groups"] == groups
    _check_against_plain_forwards(remote)


def _check_against_plain_forwards(run_dir: Path) -> None:
    """Numbers no backend computed: the clean run is a plain forward, and restoring the last block's
    output at the last position gives back the clean answer (nothing after the last block mixes
    positions), whatever the noise."""
    lm = models.load("ivx-toy")
    last_layer = lm.info.n_layers - 1
    rows = [json.loads(line) for line in _results(run_dir)[0]]
    tensors = load_file(str(run_dir / "tensors.safetensors"))
    prompts = json.loads((run_dir / "summary.json").read_text())["prompts"]
    restored = 0
    for prompt in prompts:
        ids = lm.tokenizer(prompt["base"], add_special_tokens=False)["input_ids"]
        assert len(ids) == len(prompt["tokens"])
        with torch.no_grad():
            clean_logits = lm.model(torch.tensor([ids])).logits[0, -1]
        target = prompt["target_ids"][0]
        p_clean = float(torch.softmax(clean_logits, -1)[target])
        mine = [r for r in rows if r["prompt_index"] == prompt["prompt_index"]]
        assert mine and all(r["p_clean"] == pytest.approx(p_clean, abs=1e-5) for r in mine)
        for row in mine:
            if row["component"] == "block_output" and (row["layer"], row["position"]) == (
                last_layer,
                len(ids) - 1,
            ):
                restored += 1
                assert row["target_prob"] == pytest.approx(p_clean, abs=1e-5)
                assert row["indirect_effect"] == pytest.approx(p_clean - row["p_corrupted"], abs=1e-5)
                torch.testing.assert_close(tensors[f"cell{row['cell']}"], clean_logits, atol=1e-4, rtol=1e-4)
    assert restored == len(prompts) == 2
