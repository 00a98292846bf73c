"""Path patching equals a hand-written two-step oracle (raw module hooks, no ivx code)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from ivx.model import loading as models
from ivx.recipes import run as experiment

BASE = "When Mary and John went to the store , John gave a drink to"
SOURCE = "When Mary and John went to the store , Mary gave a drink to"

# Hand-written module paths: per-head attention values (input of the output projection), the MLP
# output, and the receivers as (module, side, columns of the raw tensor) — independent of ivx.
ARCHS: dict[str, dict[str, Any]] = {
    "gpt2": {"block": "transformer.h.{}", "z": "attn.c_proj", "mlp": "mlp"},
    "llama": {"block": "model.layers.{}", "z": "self_attn.o_proj", "mlp": "mlp"},
    "gpt_neox": {"block": "gpt_neox.layers.{}", "z": "attention.dense", "mlp": "mlp"},
}
HD = 8  # head width of the tiny models: d_model 32 / 4 heads


def receivers(arch: str) -> list[tuple[dict[str, Any], str, str, list[int], str]]:
    """(ivx receiver spec, module, side, columns, positions) for each architecture."""
    block = ARCHS[arch]["block"].format(1)
    last = ARCHS[arch]["block"].format(1)
    if arch == "gpt2":  # fused c_attn: [q | k | v], heads inside each
        head = [
            (
                {"component": "head_query_output", "layer": 1, "head": 2},
                f"{block}.attn.c_attn",
                "out",
                list(range(2 * HD, 3 * HD)),
                "all",
            )
        ]
    elif arch == "llama":  # GQA: 2 key/value heads of width 8
        head = [
            (
                {"component": "head_key_output", "layer": 1, "head": 1},
                f"{block}.self_attn.k_proj",
                "out",
                list(range(HD, 2 * HD)),
                "all",
            )
        ]
    else:  # neox fuses per head: [q_h | k_h | v_h]
        head = [
            (
                {"component": "head_value_output", "layer": 1, "head": 3},
                f"{block}.attention.query_key_value",
                "out",
                list(range(3 * 3 * HD + 2 * HD, 4 * 3 * HD)),
                "all",
            )
        ]
    return head + [
        (
            {"component": "mlp_input", "layer": 1, "position": "last"},
            f"{block}.mlp",
            "in",
            list(range(32)),
            "last",
        ),
        (
            {"component": "block_output", "layer": -1, "position": "last"},
            last,
            "out",
            list(range(32)),
            "last",
        ),
    ]


def _raw(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def _put(out: Any, new: torch.Tensor) -> Any:
    return (new, *out[1:]) if isinstance(out, tuple) else new


def hooked(
    model: Any, ids: torch.Tensor, pre: dict[str, Callable], post: dict[str, Callable]
) -> torch.Tensor:
    """Run with pre-hooks (module → fn(x) -> x) and forward hooks (module → fn(out) -> out)."""
    handles = [
        model.get_submodule(m).register_forward_pre_hook(
            lambda mod, a, kw, f=f: (
                ((f(a[0]), *a[1:]), kw) if a else (a, {**kw, "hidden_states": f(kw["hidden_states"])})
            ),
            with_kwargs=True,
        )
        for m, f in pre.items()
    ]
    handles += [
        model.get_submodule(m).register_forward_hook(lambda mod, a, out, f=f: _put(out, f(_raw(out))))
        for m, f in post.items()
    ]
    try:
        with torch.no_grad():
            return model(input_ids=ids).logits[:, -1].float()
    finally:
        for h in handles:
            h.remove()


def oracle(lm: Any, arch: str, head: int, sender_z: torch.Tensor | None = None) -> float:
    """The two-step path patch of layer 0's head `head` (all positions), by hand: logit difference.

    The sender's value is the source run's, or `sender_z` ([1, seq, d], a mean ablation's)."""
    spec = ARCHS[arch]
    tok = lm.tokenizer
    base = torch.tensor([tok(BASE, add_special_tokens=False)["input_ids"]])
    source = torch.tensor([tok(SOURCE, add_special_tokens=False)["input_ids"]])
    layers = lm.info.n_layers
    zs = [spec["block"].format(i) + "." + spec["z"] for i in range(layers)]
    mlps = [spec["block"].format(i) + "." + spec["mlp"] for i in range(layers)]
    rec = receivers(arch)
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Callable:
        def f(x: torch.Tensor) -> torch.Tensor:
            seen[name] = x.clone()
            return x

        return f

    hooked(lm.model, source, {zs[0]: keep("src_z")}, {})
    if sender_z is not None:
        seen["src_z"] = sender_z
    hooked(lm.model, base, {z: keep(z) for z in zs}, {m: keep(m) for m in mlps})
    frozen = {k: v for k, v in seen.items() if k != "src_z"}
    sender = slice(head * HD, (head + 1) * HD)

    def freeze_z(z: str) -> Callable:
        def f(x: torch.Tensor) -> torch.Tensor:
            new = frozen[z].clone()
            if z == zs[0]:
                new[..., sender] = seen["src_z"][..., sender]
            return new

        return f

    pre: dict[str, Callable] = {z: freeze_z(z) for z in zs}
    post: dict[str, Callable] = {m: (lambda x, m=m: frozen[m].clone()) for m in mlps}
    recorded: dict[str, torch.Tensor] = {}
    for _, module, side, _, _ in rec:  # receivers read after the freeze (a hook registered later)

        def grab(x: torch.Tensor, module: str = module) -> torch.Tensor:
            recorded[module] = x.clone()
            return x

        table = pre if side == "in" else post
        if module in table:
            first = table[module]
            table[module] = lambda x, first=first, grab=grab: grab(first(x))
        else:
            table[module] = grab
    hooked(lm.model, base, pre, post)
    write_pre: dict[str, Callable] = {}
    write_post: dict[str, Callable] = {}
    for _, module, side, cols, where in rec:

        def write(
            x: torch.Tensor, module: str = module, cols: list[int] = cols, where: str = where
        ) -> torch.Tensor:
            new = x.clone()
            rows = slice(None) if where == "all" else slice(-1, None)
            new[:, rows, cols] = recorded[module][:, rows, cols]
            return new

        table = write_pre if side == "in" else write_post
        previous = table.get(module)
        table[module] = write if previous is None else (lambda x, a=previous, b=write: b(a(x)))
    logits = hooked(lm.model, base, write_pre, write_post)[0]
    mary, john = (
        tok(" Mary", add_special_tokens=False)["input_ids"][0],
        tok(" John", add_special_tokens=False)["input_ids"][0],
    )
    return float(logits[mary] - logits[john])


def run_rows(lm: Any, tmp: Path, interventions: list[dict], sweep: dict) -> list[dict]:
    """Run a config on a loaded model; results.jsonl rows by cell."""
    cfg = {
        "name": "pp",
        "model": {"name": str(lm.path), "bos": False},
        "prompts": [{"base": BASE, "source": SOURCE, "target": " Mary", "foil": " John"}],
        "sweep": sweep,
        "interventions": interventions,
        "metrics": ["logit_diff", "logit_diff_norm"],
        "output": {"root": str(tmp), "logits": "none", "plots": False},
    }
    path = tmp / "pp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_dir = experiment.run(path, progress=False, lm=lm)
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    return sorted(rows, key=lambda r: r["cell"])


@pytest.mark.parametrize("arch", list(ARCHS))
def test_equals_two_step_oracle(arch: str, tiny_model_dir, tmp_path: Path) -> None:
    """Every layer-0 head as sender, head/MLP/final receivers: ivx equals the hand-written oracle."""
    lm = models.load(str(tiny_model_dir(arch)))
    sender = {
        "kind": "vanilla",
        "component": "head_attention_value_output",
        "layer": 0,
        "head": "$head",
        "position": "all",
        "source": "source",
        "receivers": [r[0] for r in receivers(arch)],
    }
    rows = run_rows(lm, tmp_path, [sender], {"head": "all"})
    assert [r["head"] for r in rows] == [0, 1, 2, 3]
    expected = [oracle(lm, arch, h) for h in range(4)]
    for row, want in zip(rows, expected, strict=True):
        assert row["logit_diff"] == pytest.approx(want, abs=1e-5)
    # not vacuous: the senders move the metric away from the unpatched base run's value
    tok = lm.tokenizer
    plain = hooked(lm.model, torch.tensor([tok(BASE, add_special_tokens=False)["input_ids"]]), {}, {})[0]
    mary, john = (tok(w, add_special_tokens=False)["input_ids"][0] for w in (" Mary", " John"))
    assert max(abs(w - float(plain[mary] - plain[john])) for w in expected) > 1e-3


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox"])
def test_last_mlp_to_final_residual_is_activation_patching(arch: str, tiny_model_dir, tmp_path: Path) -> None:
    """Sender = the last MLP, receiver = the final residual stream: nothing lies between them, so
    the path patch equals patching that MLP output directly (an algebraic identity)."""
    lm = models.load(str(tiny_model_dir(arch)))
    last_mlp = ARCHS[arch]["block"].format(lm.info.n_layers - 1) + "." + ARCHS[arch]["mlp"]
    with torch.no_grad():  # a tiny random MLP barely moves the logits: make its effect visible
        for param in lm.model.get_submodule(last_mlp).parameters():
            param.mul_(4.0)
    site = {
        "kind": "vanilla",
        "component": "mlp_output",
        "layer": -1,
        "position": "$position",
        "source": "source",
    }
    direct = run_rows(lm, tmp_path, [site], {"position": "all"})
    path = {**site, "receivers": [{"component": "block_output", "layer": -1, "position": "all"}]}
    paths = run_rows(lm, tmp_path, [path], {"position": "all"})
    assert len(direct) == len(paths) > 5
    for d, p in zip(direct, paths, strict=True):
        assert p["logit_diff"] == pytest.approx(d["logit_diff"], abs=1e-5)
    assert abs(direct[-1]["logit_diff"] - direct[0]["logit_diff"]) > 2e-4, [d["logit_diff"] for d in direct]


ROOT = Path(__file__).resolve().parents[2]


def test_shipped_ioi_config(tmp_path: Path) -> None:
    """ivx-toy's IOI path patch: the layer-0 heads that carry the name (0 and 2 in activation
    patching) reach the final position's first MLP directly; later heads cannot reach it at all."""
    run_dir = experiment.run(
        ROOT / "configs" / "path_patching.yaml",
        ("prompts.limit=10",),
        out_root=str(tmp_path),
        progress=False,
    )
    grid = {
        (g["layer"], g["head"]): g["logit_diff_norm"]
        for g in json.loads((run_dir / "summary.json").read_text())["grid"]
    }
    assert grid[(0, 2)] > 0.2 and grid[(0, 0)] > 0.1
    assert max(abs(v) for (layer, _), v in grid.items() if layer > 0) < 1e-5
    assert (run_dir / "plots" / "sweep_logit_diff_norm.png").is_file()


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (
            {"receivers": [{"component": "mlp_output", "layer": 1}]},
            "interventions[0].receivers[0].component",
            "frozen",
        ),
        ({"component": "block_output", "head": None}, "interventions[0].component", "senders"),
        ({"kind": "zero"}, "interventions[0].kind", "vanilla"),
    ],
)
def test_bad_path_configs_exit_2(change: dict, field: str, words: str, tmp_path: Path) -> None:
    """User errors: one line naming file:line, the dotted field and what is allowed; exit 2."""
    from typer.testing import CliRunner

    from ivx.cli.app import app

    data = yaml.safe_load((ROOT / "configs" / "path_patching.yaml").read_text())
    data["prompts"]["file"] = str(ROOT / "configs" / "data" / "ioi.jsonl")
    data["interventions"][0].update(change)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    result = CliRunner().invoke(app, ["validate", str(path)], env={"COLUMNS": "400"})
    assert result.exit_code == 2, result.output
    assert f"{path}:" in result.output and field in result.output and words in result.output
    assert "Traceback" not in result.output


def test_receiver_head_out_of_range_is_a_config_error(tiny_model_dir, tmp_path: Path) -> None:
    """A model-aware problem (a GQA key head that does not exist) before any forward pass."""
    from ivx.core.errors import ConfigError

    lm = models.load(str(tiny_model_dir("llama")))
    sender = {
        "kind": "vanilla",
        "component": "mlp_output",
        "layer": 0,
        "source": "source",
        "receivers": [{"component": "head_key_output", "layer": 1, "head": 3}],
    }
    with pytest.raises(ConfigError, match="head 3 is out of range: head_key_output has 2 heads"):
        run_rows(lm, tmp_path, [sender], {})
