"""Final norms beyond LayerNorm and Llama's RMSNorm: Gemma 2's `(1 + γ)` RMSNorm and final-logit
soft-capping in the lens (against a hand computation from `output_hidden_states`), DLA's refusal
of Gemma 2 (post-norms, soft-cap) at validate time, a norm of no known form refused before any
weight is read, and `norms.FAMILIES` (what validate's recorded structure is told) against what
each family's norm module computes. gemma and olmo (non-affine LayerNorm) lens and DLA oracles run
in test_logit_lens.py / test_dla.py (`readout_oracles.ARCHS`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from ivx.cli.app import app
from ivx.core.errors import ConfigError
from ivx.methods import norms
from ivx.methods import readouts as methods_readouts
from ivx.model import loading as models
from ivx.recipes import prepare
from ivx.results import readouts
from tests import tiny
from tests.methods.readout_oracles import PROMPTS, hand_norm, ids_of, perturb, run_readout, token, unembed

CAP = 0.25  # small enough that the random tiny model's logits are visibly capped


@pytest.fixture(scope="module")
def gemma2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved 2-layer, width-32 Gemma 2 (post-norms, `1 + γ` RMSNorm) with soft-cap CAP."""
    import transformers as tf

    out = tmp_path_factory.mktemp("tiny-gemma2")
    tok = tiny.tokenizer()
    config = tf.Gemma2Config(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=64,
        max_position_embeddings=128,
        final_logit_softcapping=CAP,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    tf.AutoModelForCausalLM.from_config(config).eval().save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_lens_applies_gemma2_softcap(gemma2_dir: Path, tmp_path: Path) -> None:
    """Every site × position: cap · tanh(W_U (1 + γ) ⊙ h / rms(h) / cap), by hand; the last site is the
    model's own (capped) output, which differs from the uncapped one."""
    lm = models.load(str(gemma2_dir))
    perturb(lm.model)
    rows, summary, _ = run_readout(lm, tmp_path, "logit_lens", PROMPTS)
    assert "RMSNorm (1 + γ)" in summary["readout"]["norm"] and "soft-cap 0.25" in summary["readout"]["norm"]
    for row, record in zip(rows, PROMPTS, strict=True):
        target = token(lm, record["target"])
        with torch.no_grad():
            out = lm.model(input_ids=ids_of(lm, record["base"]), output_hidden_states=True)
            hs = out.hidden_states  # embeddings, block outputs; the last one already normed
            raw = torch.stack(
                [
                    unembed(lm.model, h[0] if s == len(hs) - 1 else hand_norm("gemma2", lm.model, h[0]))
                    for s, h in enumerate(hs)
                ]
            )  # [sites, seq, vocab]
        capped = CAP * torch.tanh(raw / CAP)
        assert torch.allclose(capped[-1], out.logits[0], atol=1e-5)
        assert not torch.allclose(raw[-1], out.logits[0], atol=1e-2)  # the cap matters here
        want = torch.softmax(capped, -1)[..., target]
        assert torch.allclose(torch.tensor(row["lens_target_prob"]), want, atol=1e-5)
        rank = (capped > capped[..., target : target + 1]).sum(-1).float()
        assert torch.equal(torch.tensor(row["lens_target_rank"]), rank)


def _dla_config(tmp_path: Path, model: Path) -> Path:
    path = tmp_path / "dla.yaml"
    cfg = {
        "name": "d",
        "model": {"name": str(model), "bos": False},
        "prompts": PROMPTS[:1],
        "readout": "dla",
        "metrics": ["logit_diff"],
        "output": {"root": str(tmp_path / "runs")},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_dla_refuses_softcap_at_validate(gemma2_dir: Path, tmp_path: Path) -> None:
    """`ivx validate` and `ivx run` refuse DLA on a soft-capped Gemma 2 (exit 2, the reason, no run
    directory); the recorded structure of a later validate (no module code) gives the same reason."""
    path = _dla_config(tmp_path, gemma2_dir)
    for command in ("validate", "run"):
        result = CliRunner().invoke(app, [command, str(path)])
        assert result.exit_code == 2, result.output
        assert "readout" in result.output and "soft-caps its logits (0.25·tanh(logits/0.25))" in result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()
    built, recorded = models.load(str(gemma2_dir)), models.load(str(gemma2_dir), weights=False)
    assert type(recorded.model).__name__ == "Skeleton"  # validate above recorded the structure
    assert methods_readouts.model_problems(built, "dla") == methods_readouts.model_problems(recorded, "dla")
    assert methods_readouts.model_problems(recorded, "logit_lens") == []


def _pre_hook(model: Any, path: str, seen: dict[str, torch.Tensor], key: str) -> Any:
    def keep(module: Any, args: tuple) -> None:
        seen[key] = args[0][0, -1].detach().clone()

    return model.get_submodule(path).register_forward_pre_hook(keep)


def test_dla_through_post_norms_by_hand(gemma2_dir: Path, tmp_path: Path) -> None:
    """Gemma 2 without soft-cap: each block adds post_norm(attention) and post_norm(MLP). By hand,
    with the post-norms' and the final norm's scales frozen at this run's values: head h adds
    (1 + γ_pa) ⊙ (z_h W_O,h) / rms(z W_O) and the MLP (1 + γ_pf) ⊙ m / rms(m); read through
    (1 + γ_f) ⊙ (W_U[t] − W_U[f]) / rms(x). The parts sum to the logit difference."""
    lm = models.load(str(gemma2_dir))
    perturb(lm.model)
    lm.model.config.final_logit_softcapping = None
    rows, _, _ = run_readout(lm, tmp_path, "dla", PROMPTS[:1])
    record, model, hd = PROMPTS[0], lm.model, lm.info.head_dim
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for i in range(lm.info.n_layers):
        block = f"model.layers.{i}"
        hooks.append(_pre_hook(model, f"{block}.self_attn.o_proj", seen, f"z{i}"))
        hooks.append(_pre_hook(model, f"{block}.post_feedforward_layernorm", seen, f"m{i}"))
    hooks.append(_pre_hook(model, "model.norm", seen, "final"))
    try:
        with torch.no_grad():
            out = model(input_ids=ids_of(lm, record["base"]), output_hidden_states=True)
    finally:
        for handle in hooks:
            handle.remove()

    def rms(v: torch.Tensor, eps: float) -> torch.Tensor:
        return (v.pow(2).mean() + eps).sqrt()

    target, foil = token(lm, record["target"]), token(lm, record["foil"])
    w_u = model.get_output_embeddings().weight
    eps = model.config.rms_norm_eps
    u = (1 + model.model.norm.weight) * (w_u[target] - w_u[foil]) / rms(seen["final"], eps)
    with torch.no_grad():
        heads, mlps = [], []
        for i in range(lm.info.n_layers):
            layer = model.model.layers[i]
            w_o = layer.self_attn.o_proj.weight  # [d, heads * hd]
            attn = seen[f"z{i}"] @ w_o.T
            per = [seen[f"z{i}"][h * hd : (h + 1) * hd] @ w_o[:, h * hd : (h + 1) * hd].T for h in range(4)]
            g_pa = (1 + layer.post_attention_layernorm.weight) / rms(attn, eps)
            heads.append([float((g_pa * c) @ u) for c in per])
            m = seen[f"m{i}"]
            mlps.append(float(((1 + layer.post_feedforward_layernorm.weight) * m / rms(m, eps)) @ u))
        embed = float(out.hidden_states[0][0, -1] @ u)
        logit = float(out.logits[0, -1, target] - out.logits[0, -1, foil])
    assert sum(map(sum, heads)) + sum(mlps) + embed == pytest.approx(logit, abs=1e-4)  # the identity
    row = rows[0]
    assert torch.allclose(torch.tensor(row["dla_heads"]), torch.tensor(heads), atol=1e-5)
    assert row["dla_mlp"] == pytest.approx(mlps, abs=1e-5)
    assert row["dla_embed"] == pytest.approx(embed, abs=1e-5)
    assert row["dla_attn_bias"] == pytest.approx([0.0, 0.0], abs=1e-6)  # no o_proj bias
    assert row["dla_total"] == pytest.approx(logit, abs=1e-4)
    assert "warning" not in _summary_point(tmp_path)


def _summary_point(tmp_path: Path) -> dict[str, Any]:
    import json

    summary = json.loads(next(tmp_path.glob("*/summary.json")).read_text())
    return summary["readout"]["points"][0]


def test_dla_warns_when_parts_do_not_sum(gemma2_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """A family ivx has no row for, whose blocks norm their sublayer outputs (Gemma 2 with its row
    removed and no soft-cap): DLA runs, its parts miss the logit difference, and the summary and
    the terminal table say so."""
    lm = models.load(str(gemma2_dir))
    perturb(lm.model)
    lm.model.config.final_logit_softcapping = None
    monkeypatch.delitem(norms.FAMILIES, "gemma2")
    rows, summary, _ = run_readout(lm, tmp_path, "dla", PROMPTS[:1])
    assert abs(rows[0]["dla_total"] - rows[0]["dla_logit"]) > 1e-3
    assert "do not sum to the logit difference" in summary["readout"]["points"][0]["warning"]
    assert "warning: the parts do not sum" in readouts.table_text(summary)


class _MaxNorm(torch.nn.Module):
    """x / max|x|: a final norm of none of the forms readouts linearise."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x / x.abs().amax(-1, keepdim=True)


def test_unknown_norm_refused_before_weights(tiny_model_dir, tmp_path: Path) -> None:
    """A meta model whose final norm computes no known form: validate's prepare raises a ConfigError at
    `readout` naming the module, for the lens too."""
    lm = models.load(str(tiny_model_dir("llama")), weights=False)
    assert lm.device.type == "meta"
    with torch.device("meta"):
        lm.model.model.norm = _MaxNorm(lm.info.d_model)
    path = _dla_config(tmp_path, Path(lm.path))
    with pytest.raises(ConfigError) as info:
        prepare.prepare_all(path, ("readout=logit_lens",), lm, weights=False)
    problem = next(p for p in info.value.problems if p.path == "readout")
    assert "model.norm is a _MaxNorm that computes none of the forms" in problem.message


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma", "olmo"])
def test_families_match_tiny_modules(arch: str, tiny_model_dir) -> None:
    """The table validate trusts for recorded structures says what the (meta) module computes."""
    lm = models.load(str(tiny_model_dir(arch)), weights=False)
    path, norm = methods_readouts.unembed.find_norm(lm.model)
    kind, eps = norms.classify(norm, lm.info.d_model, path)
    assert kind == norms.FAMILIES[lm.info.model_type].norm
    assert eps == pytest.approx(
        1e-5 if arch in ("gpt2", "olmo") else lm.model.config.to_dict().get("rms_norm_eps"), rel=1e-3
    )


def _tiny_config(model_type: str) -> Any:
    import transformers as tf

    sizes = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2}
    sizes |= {"n_embd": 32, "n_layer": 1, "n_head": 4, "intermediate_size": 64, "head_dim": 8}
    return tf.AutoConfig.for_model(model_type, **sizes)


def test_families_match_every_layout() -> None:
    """Every model type with a layout row (the ones validate records) has a FAMILIES row that agrees
    with its final norm module built on the meta device, soft-cap field included."""
    from transformers import AutoModelForCausalLM

    from ivx.model.layouts import LAYOUTS

    for model_type in LAYOUTS:
        config = _tiny_config(model_type)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        path, norm = methods_readouts.unembed.find_norm(model)
        kind, _ = norms.classify(norm, model.get_output_embeddings().weight.shape[-1], path)
        family = norms.FAMILIES[model_type]
        assert kind == family.norm, model_type
        assert family.softcap == hasattr(config, "final_logit_softcapping"), model_type
        block = model.get_submodule(f"{LAYOUTS[model_type].blocks}.0")
        names = {name for name, _ in block.named_children()}
        assert set(family.post_norms) <= names and ("post_feedforward_layernorm" in names) == bool(
            family.post_norms
        ), model_type
