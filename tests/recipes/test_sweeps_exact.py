"""A swept cell equals the same config written with the literal value (issue #27): coefficient,
source, zipped (layer, head) pairs, named points and path-patching receivers, on tiny models; and
an interrupted zipped sweep resumes to byte-identical outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.engine import test_patching_oracles as oracles
from tests.engine.test_patching_oracles import cell_logits
from tests.recipes.test_ray_backend import cluster  # noqa: F401 - the Ray cluster fixture
from tests.results import durable

# one cell per forward, every shortcut off: a swept cell and its literal twin run the very same
# arithmetic, so they must be bitwise equal (the shortcuts' own exactness is tested elsewhere)
ONE = {
    "batch": {
        "size": 1,
        "prefix_reuse": False,
        "layer_reuse": False,
        "defer_head": False,
        "trim_final": False,
    }
}


def run_config(folder: Path, model_dir: Path, body: dict) -> Path:
    """A run of `body` on `model_dir` in its own folder (the oracle tests' one prompt)."""
    folder.mkdir(parents=True)
    return oracles.run_config(folder, model_dir, body)


def _cells(run_dir: Path) -> list[tuple[dict, torch.Tensor]]:
    logits = cell_logits(run_dir)
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    return [(row, logits[row["cell"]]) for row in sorted(rows, key=lambda r: r["cell"])]


@pytest.fixture
def gpt2(tiny_model_dir) -> Path:  # noqa: ANN001
    return tiny_model_dir("gpt2")


def test_swept_coefficient_and_source_equal_literals(gpt2: Path, tmp_path: Path) -> None:
    steer = {
        "kind": "addition",
        "component": "block_output",
        "layer": 0,
        "position": -1,
        "contrast": {"positive": "Mary gave a drink to", "negative": "John gave a ball to"},
    }
    copy = {"kind": "vanilla", "component": "block_output", "layer": 1, "position": 3}
    swept = run_config(
        tmp_path / "swept",
        gpt2,
        {
            "sweep": {"coef": [0.5, 2.0], "src": ["base", "source"]},
            "interventions": [{**steer, "coefficient": "$coef"}, {**copy, "source": "$src"}],
            **ONE,
        },
    )
    cells = _cells(swept)
    assert [(r["coef"], r["src"]) for r, _ in cells] == [
        (0.5, "base"), (0.5, "source"), (2.0, "base"), (2.0, "source")
    ]  # fmt: skip
    for row, logits in cells[1:3]:
        data = {
            "sweep": {},
            "interventions": [{**steer, "coefficient": row["coef"]}, {**copy, "source": row["src"]}],
            **ONE,
        }
        literal = cell_logits(run_config(tmp_path / f"lit{row['cell']}", gpt2, data))
        assert torch.equal(logits, next(iter(literal.values())))
    assert not torch.equal(cells[0][1], cells[2][1])  # the coefficient matters


def test_zipped_pairs_and_named_points_equal_literals(tiny_model_dir, tmp_path: Path) -> None:  # noqa: ANN001
    llama = tiny_model_dir("llama")  # GQA: 4 query heads, 2 key/value heads
    head = {
        "kind": "vanilla",
        "component": "head_attention_value_output",
        "position": "all",
        "source": "source",
    }
    swept = run_config(
        tmp_path / "swept",
        llama,
        {
            "sweep": {
                "zip": {"layer": [1, 0], "head": [3, 1]},
                "points": [
                    {"name": "keys", "kc": "head_key_output", "kh": 1},
                    {"name": "off", "kc": "block_output", "kh": None},
                ],
            },
            "interventions": [
                {**head, "layer": "$layer", "head": "$head"},
                {"kind": "zero", "component": "$kc", "layer": 1, "position": -1, "head": "$kh"},
            ],
            **ONE,
        },
    )
    cells = _cells(swept)
    # (run_config writes keys sorted: `points` before `zip`, and the zip group as head/layer)
    assert [(r["point"], r["head/layer"], r["layer"], r["head"]) for r, _ in cells] == [
        ("keys", "3/1", 1, 3), ("keys", "1/0", 0, 1), ("off", "3/1", 1, 3), ("off", "1/0", 0, 1)
    ]  # fmt: skip
    zeros = {
        "keys": {"kind": "zero", "component": "head_key_output", "layer": 1, "position": -1, "head": 1},
        "off": {"kind": "zero", "component": "block_output", "layer": 1, "position": -1},
    }
    for row, logits in cells[1::2]:
        data = {"interventions": [{**head, "layer": 0, "head": 1}, zeros[row["point"]]], **ONE}
        literal = run_config(tmp_path / row["point"], llama, data)
        assert torch.equal(logits, next(iter(cell_logits(literal).values())))
    assert not torch.equal(cells[1][1], cells[3][1])


def test_swept_receiver_head_equals_literal_path_patch(gpt2: Path, tmp_path: Path) -> None:
    sender = {
        "kind": "vanilla",
        "component": "head_attention_value_output",
        "layer": 0,
        "head": 1,
        "position": "all",
        "source": "source",
    }
    receiver = {"component": "head_query_output", "layer": 1, "position": "last"}
    swept = run_config(
        tmp_path / "swept",
        gpt2,
        {
            "sweep": {"rhead": [0, 2]},
            "interventions": [{**sender, "receivers": [{**receiver, "head": "$rhead"}]}],
        },
    )
    cells = _cells(swept)
    for row, logits in cells:
        literal = run_config(
            tmp_path / f"lit{row['rhead']}",
            gpt2,
            {"interventions": [{**sender, "receivers": [{**receiver, "head": row["rhead"]}]}]},
        )
        assert torch.equal(logits, next(iter(cell_logits(literal).values())))
    assert not torch.equal(cells[0][1], cells[1][1])  # the two receivers carry different effects


ZIPPED = (  # the durability tests' trace config, its layer × position grid zipped into a diagonal
    durable.CONFIG.replace("component: [block_output]", "component: [block_output, mlp_output]").replace(
        "  layer: all\n  position: all\n", "  zip: {layer: [0, 1, 2, 3], position: [1, 2, -1, -2]}\n"
    )
)


@pytest.mark.slow
def test_interrupted_zipped_sweep_resumes_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.results.test_durable import interrupted, last_line, run

    config = durable.write_config(tmp_path / "exp")
    config.write_text(ZIPPED)
    code, out = run(str(config), "--out", str(tmp_path / "whole"))
    assert code == 0, out
    whole = last_line(out)
    run_dir = interrupted(config, tmp_path / "cut", monkeypatch)
    code, out = run("--resume", str(run_dir))
    assert code == 0, out
    assert durable.snapshot(run_dir) == durable.snapshot(whole)
    summary = json.loads((whole / "summary.json").read_text())
    assert summary["axes"] == ["component", "layer/position"] and len(summary["grid"]) == 8


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "sets"),
    [("top_heads", ("prompts.limit=4",)), ("steering_run", ("sweep.coef=[0.0,3.0]",))],
)
def test_zipped_and_generic_sweeps_on_ray_equal_local(
    cluster: str,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    name: str,
    sets: tuple,
) -> None:
    from tests.recipes.test_ray_backend import ROOT, _finish, _ivx, _same_results, _sets

    config = str(ROOT / "configs" / f"{name}.yaml")
    args = (*_sets(("output.logits=last", "output.plots=false", *sets)),)
    local = _finish(_ivx(config, "--out", str(tmp_path / "local"), *args))
    remote = _finish(
        _ivx(config, "--out", str(tmp_path / "ray"), "--backend", "ray", "--address", cluster, *args)
    )
    _same_results(local, remote)
