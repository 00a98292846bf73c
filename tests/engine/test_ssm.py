"""State-space and hybrid models: ivx's patches equal hand-written hooks, and the shortcuts say what ran.

Tiny random Mamba, Mamba2, Jamba, Bamba, FalconH1 and Zamba2 models (4 layers, width 32) are built
from configs; every cell of an activation-patching run (block, mixer, attention and MLP components
at their layers, several positions, default shortcuts) is compared with a forward whose hooks are
written here against module paths typed by hand, not read from ivx's component table.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ivx.core import interventions
from ivx.core.errors import ConfigError
from ivx.engine import shortcuts
from ivx.model import loading as models
from ivx.plan import schedule
from ivx.recipes import run as experiment
from tests.engine.test_trace_oracle import PROMPT, SUBJECT, hand_trace
from tests.tiny import tokenizer
from tests.tokenizers import build_tokenizer

BASE = "When Mary and John went to the store , John gave a drink to"
SOURCE = "When Mary and John went to the store , Mary gave a drink to"
POSITIONS = [2, 9, 13]
_ATTN = {"num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8}
_SSM2 = {
    "mamba_n_heads": 8,
    "mamba_d_head": 8,
    "mamba_d_state": 8,
    "mamba_n_groups": 1,
    "mamba_chunk_size": 16,
}
CONFIGS: dict[str, dict[str, Any]] = {
    "mamba": {"num_hidden_layers": 2, "state_size": 8, "expand": 2, "time_step_rank": "auto"},
    "mamba2": {"num_hidden_layers": 2, "num_heads": 8, "head_dim": 8, "state_size": 8, "n_groups": 1,
               "expand": 2, "chunk_size": 16},
    "jamba": {**_ATTN, "attn_layer_period": 2, "attn_layer_offset": 1, "expert_layer_period": 2,
              "expert_layer_offset": 1, "num_experts": 2, "num_experts_per_tok": 1, "mamba_d_state": 8,
              "mamba_dt_rank": 4},
    "bamba": {**_ATTN, **_SSM2, "attn_layer_indices": [1, 3]},
    "falcon_h1": {**_ATTN, **_SSM2, "mamba_d_ssm": 64},
    "zamba2": {**_ATTN, "mamba_headdim": 8, "mamba_d_state": 8, "n_mamba_heads": 8, "num_mem_blocks": 1,
               "layers_block_type": ["mamba", "hybrid", "mamba", "hybrid"], "use_mem_rope": False,
               "adapter_rank": 4},
}  # fmt: skip
# Hand-written module paths: per architecture, component → per layer (None: not at that layer).
_M, _J = "model.layers.{}", "model.layers.{}.{}"
HAND: dict[str, dict[str, Callable[[int], str | None]]] = {
    "mamba": {"block_output": "backbone.layers.{}".format, "mixer_output": "backbone.layers.{}.mixer".format},
    "mamba2": {
        "block_output": "backbone.layers.{}".format,
        "mixer_output": "backbone.layers.{}.mixer".format,
    },
    "jamba": {
        "block_output": _M.format,
        "mixer_output": lambda i: _J.format(i, "mamba") if i % 2 == 0 else None,
        "attention_output": lambda i: _J.format(i, "self_attn") if i % 2 else None,
        "mlp_output": lambda i: _J.format(i, "feed_forward"),
    },
    "bamba": {
        "block_output": _M.format,
        "mixer_output": lambda i: _J.format(i, "mamba") if i % 2 == 0 else None,
        "attention_output": lambda i: _J.format(i, "self_attn") if i % 2 else None,
        "mlp_output": lambda i: _J.format(i, "feed_forward"),
    },
    "falcon_h1": {
        "block_output": _M.format,
        "mixer_output": lambda i: _J.format(i, "mamba"),
        "attention_output": lambda i: _J.format(i, "self_attn"),
        "mlp_output": lambda i: _J.format(i, "feed_forward"),
    },
    "zamba2": {
        "block_output": _M.format,
        "mixer_output": lambda i: _J.format(i, "mamba" if i % 2 == 0 else "mamba_decoder.mamba"),
    },
}


def build(arch: str, out: Path) -> Path:
    """A tiny random model of `arch` with the tests' word tokenizer; skip if transformers lacks it."""
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = tokenizer()
    base = {"vocab_size": len(tok), "hidden_size": 32, "num_hidden_layers": 4, "intermediate_size": 64,
            "pad_token_id": 0, "bos_token_id": 0, "eos_token_id": 0}  # fmt: skip
    try:
        config = AutoConfig.for_model(arch, **{**base, **CONFIGS[arch]})
    except ValueError as exc:
        pytest.skip(f"{arch} is not in the installed transformers {transformers.__version__}: {exc}")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def ssm_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """ssm_dir("jamba") → a saved tiny model (built once per module)."""
    return functools.cache(lambda arch: build(arch, tmp_path_factory.mktemp(f"tiny-{arch}")))


def run(tmp_path: Path, model_dir: Path, body: dict, name: str = "t") -> Path:
    data = {
        "name": name,
        "model": {"name": str(model_dir)},
        "prompts": [{"base": BASE, "source": SOURCE, "target": " Mary", "foil": " John"}],
        "metrics": ["target_prob"],
        "output": {"plots": False},
        **body,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return experiment.run(path, out_root=str(tmp_path / name), progress=False)


def hand_patch(model: Any, ids: dict[str, torch.Tensor], module: str, pos: int) -> torch.Tensor:
    """Last-position logits of BASE with `module`'s output at `pos` taken from the SOURCE run."""
    target = model.get_submodule(module)
    saved: dict[str, torch.Tensor] = {}

    def grab(mod: Any, args: Any, out: Any) -> None:
        saved["h"] = (out[0] if isinstance(out, tuple) else out).clone()

    def put(mod: Any, args: Any, out: Any) -> Any:
        h = (out[0] if isinstance(out, tuple) else out).clone()
        h[0, pos] = saved["h"][0, pos]
        return (h, *out[1:]) if isinstance(out, tuple) else h

    logits = torch.empty(0)
    for text, hook in ((SOURCE, grab), (BASE, put)):
        handle = target.register_forward_hook(hook)
        try:
            with torch.no_grad():
                logits = model(ids[text]).logits[0, -1].float()
        finally:
            handle.remove()
    return logits


def points(arch: str, n_layers: int) -> list[dict[str, Any]]:
    """Every (hand-pathed component, layer where it exists) pair."""
    return [
        {"component": c, "layer": layer}
        for c, path in HAND[arch].items()
        for layer in range(n_layers)
        if path(layer) is not None
    ]


def check_patching(arch: str, model_dir: Path, tmp_path: Path) -> dict:
    """Every cell equals the hand-hooked forward; returns the run's shortcut report."""
    lm = models.load(str(model_dir))
    grid = points(arch, lm.info.n_layers)
    iv = {"kind": "vanilla", "component": "$component", "layer": "$layer", "position": "$position"}
    run_dir = run(
        tmp_path, model_dir, {"sweep": {"points": grid, "position": POSITIONS}, "interventions": [iv]}
    )
    tensors = load_file(str(run_dir / "tensors.safetensors"))
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert len(rows) == len(grid) * len(POSITIONS)
    ids = {t: torch.tensor([lm.tokenizer(t, add_special_tokens=False)["input_ids"]]) for t in (BASE, SOURCE)}
    for row in rows:
        module = HAND[arch][row["component"]](row["layer"])
        want = hand_patch(lm.model, ids, str(module), row["position"])
        torch.testing.assert_close(tensors[f"cell{row['cell']}"], want, atol=1e-5, rtol=1e-5, msg=str(row))
    return json.loads((run_dir / "manifest.json").read_text())["shortcuts"]


@pytest.mark.parametrize("arch", ["mamba", "jamba"])
def test_patching_equals_hand_hooks(arch: str, ssm_dir, tmp_path: Path) -> None:
    report = check_patching(arch, ssm_dir(arch), tmp_path)
    state = report["shortcuts"]
    # transformers' Mamba 1 scan restarts a multi-token input from a zero state: no prefix reuse
    # (before transformers 5.24, Mamba returns its state as `cache_params`, not a cache: no reuse either)
    why = state["prefix_reuse"].get("why", "")
    assert not state["prefix_reuse"]["on"] and (
        "cached recurrent state" in why or "returns no KV cache" in why
    )
    assert all(state[name]["on"] for name in ("layer_reuse", "skip_noop", "defer_head", "trim_final")), state


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["mamba2", "bamba", "falcon_h1", "zamba2"])
def test_patching_equals_hand_hooks_more_families(arch: str, ssm_dir, tmp_path: Path) -> None:
    report = check_patching(arch, ssm_dir(arch), tmp_path)
    state = report["shortcuts"]
    import transformers

    if state["prefix_reuse"].get("why", "").endswith("returns no KV cache"):
        # before transformers 5.24 Mamba-2 returns its state as `cache_params`, not a cache
        assert tuple(int(x) for x in transformers.__version__.split(".")[:2]) < (5, 24), state
        assert all(v["on"] for k, v in state.items() if k != "prefix_reuse"), state
        return
    # the prefix's recurrent state is recomputed and continued from: every shortcut engaged
    assert all(v["on"] for v in state.values()), state
    assert sum(g["cells_after_prefix"] for g in report["groups"]) > 0


def test_components_differ_by_layer_and_are_refused_where_absent(ssm_dir, tmp_path: Path) -> None:
    """Jamba: attention at odd layers, a Mamba mixer at even ones; asking for either elsewhere is a
    config problem at the intervention's line, before any forward pass."""

    lm = models.load(str(ssm_dir("jamba")), weights=False)
    assert lm.info.layers[0] != lm.info.layers[1]
    assert "mixer_output" in lm.info.layers[0] and "attention_output" not in lm.info.layers[0]
    assert "attention_output" in lm.info.layers[1] and "mixer_output" not in lm.info.layers[1]
    iv = {"kind": "vanilla", "component": "attention_output", "layer": 0, "position": 2}
    with pytest.raises(ConfigError) as err:
        run(tmp_path, ssm_dir("jamba"), {"interventions": [iv]})
    text = str(err.value)
    assert "attention_output" in text and "layer 0" in text and "layers 1, 3" in text
    assert "t.yaml:" in text  # file:line of the intervention


@pytest.mark.parametrize("arch", ["mamba", pytest.param("mamba2", marks=pytest.mark.slow)])
def test_causal_trace_equals_hand_written_rome(arch: str, ssm_dir, tmp_path: Path, monkeypatch) -> None:
    """Noise the subject, restore block and mixer outputs (a window of 3 for the mixer); every
    effect equals ROME written out with hand hooks and the same noise draws. Mamba 2 runs its
    cells from recomputed prefix states (the noised subject inside the prefix)."""

    # a tiny model's blocks cost their fixed overhead, and recomputing a prefix never pays: price
    # tokens only, so that cells continue after their own prefixes (the noised subject inside it)
    monkeypatch.setattr(shortcuts, "estimate", lambda lm: schedule.Cost(block=0.0, token=1e-6))
    model_dir = ssm_dir(arch)
    iv = {"kind": "vanilla", "component": "$component", "layer": "$layer", "position": "$position",
          "window": {"mixer_output": 3}}  # fmt: skip
    body = {
        "seed": 3,
        "prompts": [{"base": PROMPT, "subject": SUBJECT, "target": " Seattle"}],
        "corrupt": {"kind": "noise", "positions": "subject", "scale": 3.0, "samples": 2},
        "sweep": {"component": ["block_output", "mixer_output"], "layer": "all", "position": "all"},
        "interventions": [iv],
        "metrics": ["indirect_effect"],
        "output": {"plots": False, "logits": "none"},
    }
    run_dir = run(tmp_path, model_dir, body)
    lm = models.load(str(model_dir))
    enc = lm.tokenizer(PROMPT, add_special_tokens=False, return_offsets_mapping=True)
    subj = [i for i, (a, _) in enumerate(enc["offset_mapping"]) if a < len(SUBJECT)]
    span = (subj[0], subj[-1] + 1)
    weight = lm.model.get_input_embeddings().weight.detach()
    sigma = float(weight[enc["input_ids"][span[0] : span[1]]].std())
    noise = [interventions.noise(3, 0, s, span[1] - span[0], lm.info.d_model, 3.0 * sigma) for s in range(2)]
    target = lm.tokenizer(" Seattle", add_special_tokens=False)["input_ids"][0]
    names = {"emb": "backbone.embeddings", **{c: f(0).replace(".0", ".{}") for c, f in HAND[arch].items()}}
    rows = [json.loads(x) for x in (run_dir / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * lm.info.n_layers * len(enc["input_ids"])
    for row in rows:
        if row["position"] not in (0, span[1] - 1, len(enc["input_ids"]) - 1):
            continue
        window = None if row["component"] == "block_output" else 3
        ie, _, _ = hand_trace(
            lm, names, row["component"], row["layer"], row["position"], window, noise, span, target
        )
        assert row["indirect_effect"] == pytest.approx(ie, abs=1e-5), row
    record = json.loads((run_dir / "manifest.json").read_text())["shortcuts"]
    import transformers

    # before transformers 5.24 Mamba-2 returns its state as `cache_params`, not a cache
    old = tuple(int(x) for x in transformers.__version__.split(".")[:2]) < (5, 24)
    if arch == "mamba2" and not old:  # the restored cells continued from the noised run's recomputed prefix
        assert record["shortcuts"]["prefix_reuse"]["on"], record
        assert sum(g["cells_after_prefix"] for g in record["groups"]) > 0


@pytest.mark.parametrize("style", [pytest.param("gpt2", marks=pytest.mark.slow), "llama"])
def test_recomputed_prefixes_with_real_tokenizer_conventions(
    style: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mamba-2 with a byte-level BPE (no BOS) and a SentencePiece-style tokenizer (BOS `<s>`,
    byte fallback): a noised-subject trace over every position, with cells continuing from
    recomputed prefix states, equals the same run with every shortcut off (the plain forward)."""
    import transformers

    if tuple(int(x) for x in transformers.__version__.split(".")[:2]) < (5, 24):
        pytest.skip("Mamba-2 returns its state as cache_params before transformers 5.24: no prefix reuse")
    tok = build_tokenizer(style)
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("mamba2", vocab_size=len(tok), hidden_size=32,
                                  **CONFIGS["mamba2"] | {"num_hidden_layers": 2},
                                  bos_token_id=tok.bos_token_id or 0, eos_token_id=tok.eos_token_id or 0,
                                  pad_token_id=tok.eos_token_id or 0)  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    monkeypatch.setattr(shortcuts, "estimate", lambda lm: schedule.Cost(block=0.0, token=1e-6))
    body = {
        "seed": 1,
        "prompts": [{"base": "The Space Needle is in downtown", "subject": "The Space Needle", "target": " Seattle"}],
        "corrupt": {"kind": "noise", "positions": "subject", "scale": 3.0, "samples": 2},
        "sweep": {"layer": "all", "position": "all"},
        "interventions": [{"kind": "vanilla", "component": "block_output", "layer": "$layer", "position": "$position"}],
        "metrics": ["target_prob"],
        "output": {"plots": False, "logits": "none"},
    }  # fmt: skip
    off = {k: False for k in ("prefix_reuse", "layer_reuse", "skip_noop", "defer_head", "trim_final")}
    fast = run(tmp_path, tmp_path / "m", body, "fast")
    plain = run(tmp_path, tmp_path / "m", {**body, "batch": off}, "plain")
    rows = [
        sorted(
            (json.loads(x) for x in (d / "results.jsonl").read_text().splitlines()), key=lambda r: r["cell"]
        )
        for d in (fast, plain)
    ]
    assert len(rows[0]) == len(rows[1]) > 0
    for a, b in zip(*rows, strict=True):
        assert (a["layer"], a["position"]) == (b["layer"], b["position"])
        assert a["target_prob"] == pytest.approx(b["target_prob"], abs=1e-5), (a, b)
    record = json.loads((fast / "manifest.json").read_text())["shortcuts"]
    assert record["shortcuts"]["prefix_reuse"]["on"], record
    assert sum(g["cells_after_prefix"] for g in record["groups"]) > 0
    bos = tok("x")["input_ids"][0] == tok.bos_token_id  # the SentencePiece style adds <s>
    assert bos == (style == "llama") and len(rows[0]) == 2 * len(
        tok("The Space Needle is in downtown")["input_ids"]
    )
