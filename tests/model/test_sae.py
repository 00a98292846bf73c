"""SAE math against hand-written formulas; SAELens-layout round trip; malformed files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ivx.model import sae as saes
from ivx.store.sae_files import SAEFileError


def _in(s: saes.SAE, x: torch.Tensor) -> torch.Tensor:
    return x - s.b_dec if s.apply_b_dec_to_input else x


def _hand_encode(s: saes.SAE, x: torch.Tensor) -> torch.Tensor:
    """The published formulas, written out per architecture (no normalisation)."""
    xc = _in(s, x)
    if s.architecture == "gated":
        gate = (xc @ s.W_enc + s.b_gate) > 0
        mag = torch.relu(xc @ (s.W_enc * torch.exp(s.r_mag)) + s.b_mag)
        return gate.float() * mag
    pre = xc @ s.W_enc + s.b_enc
    if s.architecture == "standard":
        return torch.clamp(pre, min=0)
    if s.architecture in ("jumprelu", "batchtopk"):
        return torch.where(pre > s.threshold, torch.clamp(pre, min=0), torch.zeros_like(pre))
    # topk: keep the k largest pre-activations per token (ReLU'd), zero the rest
    out = torch.zeros_like(pre)
    flat, flat_out = pre.reshape(-1, pre.shape[-1]), out.reshape(-1, pre.shape[-1])
    for i in range(flat.shape[0]):
        order = sorted(range(flat.shape[1]), key=lambda j: -float(flat[i, j]))[: int(s.k)]
        for j in order:
            flat_out[i, j] = max(float(flat[i, j]), 0.0)
    return flat_out.reshape(pre.shape)


@pytest.mark.parametrize("arch", ["standard", "jumprelu", "topk", "batchtopk", "gated"])
@pytest.mark.parametrize("b_dec_in", [True, False])
def test_encode_decode_match_the_formulas(arch: str, b_dec_in: bool) -> None:
    s = saes.random_sae(arch, d_in=8, d_sae=24, seed=3, apply_b_dec_to_input=b_dec_in)
    x = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(1))
    f = s.encode(x)
    torch.testing.assert_close(f, _hand_encode(s, x), rtol=1e-6, atol=1e-6)
    assert 0 < int((f > 0).sum()) < f.numel()  # some features fire, some do not
    torch.testing.assert_close(s.decode(f), f @ s.W_dec + s.b_dec, rtol=1e-6, atol=1e-6)
    df = torch.zeros_like(f)
    df[..., 5] = 2.0
    torch.testing.assert_close(s.delta(df), 2.0 * s.W_dec[5].expand(2, 3, 8), rtol=1e-6, atol=1e-6)


def test_topk_keeps_exactly_k() -> None:
    s = saes.random_sae("topk", d_in=8, d_sae=24, k=3, seed=0)
    f = s.encode(torch.randn(5, 8) * 10)
    assert ((f > 0).sum(-1) <= 3).all() and ((f != 0).sum(-1) <= 3).all()


def test_normalisations_match_the_formulas() -> None:
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(2)) * 5 + 1
    base = saes.random_sae("standard", d_in=8, d_sae=16, seed=4)
    import dataclasses

    cnr = dataclasses.replace(base, normalize_activations="constant_norm_rescale")
    coeff = 8**0.5 / x.norm(dim=-1, keepdim=True)
    f = cnr.encode(x)
    torch.testing.assert_close(f, torch.relu((x * coeff - base.b_dec) @ base.W_enc + base.b_enc))
    torch.testing.assert_close(cnr.decode(f, like=x), (f @ base.W_dec + base.b_dec) / coeff)
    torch.testing.assert_close(cnr.delta(f, like=x), (f @ base.W_dec) / coeff)
    with pytest.raises(ValueError, match="like=x"):
        cnr.decode(f)

    ln = dataclasses.replace(base, normalize_activations="layer_norm")
    mu = x.mean(-1, keepdim=True)
    std = (x - mu).std(-1, keepdim=True)
    f = ln.encode(x)
    torch.testing.assert_close(
        f, torch.relu(((x - mu) / (std + 1e-5) - base.b_dec) @ base.W_enc + base.b_enc)
    )
    torch.testing.assert_close(ln.decode(f, like=x), (f @ base.W_dec + base.b_dec) * std + mu)

    avg = dataclasses.replace(base, normalize_activations="expected_average_only_in", norm_scaling_factor=0.5)
    f = avg.encode(x)
    torch.testing.assert_close(f, torch.relu((x * 0.5 - base.b_dec) @ base.W_enc + base.b_enc))
    torch.testing.assert_close(avg.decode(f), (f @ base.W_dec + base.b_dec) / 0.5)


def test_rescale_by_decoder_norm() -> None:
    import dataclasses

    s = dataclasses.replace(saes.random_sae("topk", d_in=8, d_sae=16, k=4), rescale_acts_by_decoder_norm=True)
    x = torch.randn(3, 8)
    n = s.W_dec.norm(dim=-1)
    pre = ((x - s.b_dec) @ s.W_enc + s.b_enc) * n
    torch.testing.assert_close(s.pre(x), pre)
    f = s.encode(x)
    torch.testing.assert_close(s.decode(f), (f / n) @ s.W_dec + s.b_dec)


@pytest.mark.parametrize("arch", ["standard", "jumprelu", "topk", "gated"])
def test_save_load_round_trip_is_bit_equal(arch: str, tmp_path: Path) -> None:
    s = saes.random_sae(arch, d_in=8, d_sae=16, hook_name="blocks.1.hook_resid_post", seed=5)
    back = saes.load(saes.save(s, tmp_path / "sae"))
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold", "b_gate", "r_mag", "b_mag"):
        a, b = getattr(s, name), getattr(back, name)
        assert (a is None) == (b is None), name
        assert a is None or torch.equal(a, b), name
    assert (back.architecture, back.d_in, back.d_sae, back.k) == (s.architecture, 8, 16, s.k)
    assert back.site() == ("block_output", 1)
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["hook_name"] == cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_post"
    saes.save(back, tmp_path / "again")
    assert json.loads((tmp_path / "again" / "cfg.json").read_text()) == cfg


def _write(tmp_path: Path, cfg: dict, tensors: dict[str, torch.Tensor]) -> Path:
    from safetensors.torch import save_file

    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    save_file(tensors, str(tmp_path / "sae_weights.safetensors"))
    return tmp_path


def _weights(d_in: int = 4, d_sae: int = 6) -> dict[str, torch.Tensor]:
    return {
        "W_enc": torch.randn(d_in, d_sae),
        "b_enc": torch.randn(d_sae),
        "W_dec": torch.randn(d_sae, d_in),
        "b_dec": torch.randn(d_in),
    }


def test_older_and_newer_cfg_spellings(tmp_path: Path) -> None:
    old = {"d_in": 4, "d_sae": 6, "hook_point": "blocks.3.hook_resid_pre", "hook_point_layer": 3}
    s = saes.load(_write(tmp_path / "old", old, _weights()))
    assert (s.architecture, s.site()) == ("standard", ("block_input", 3))
    v5 = {
        "d_in": 4,
        "d_sae": 6,
        "hook_name": "blocks.0.hook_mlp_out",
        "hook_layer": 0,
        "architecture": "standard",
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 2},
    }
    s = saes.load(_write(tmp_path / "v5", v5, _weights()))
    assert (s.architecture, s.k, s.site()) == ("topk", 2.0, ("mlp_output", 0))
    v6 = {
        "d_in": 4,
        "d_sae": 6,
        "architecture": "jumprelu",
        "metadata": {"hook_name": "blocks.1.hook_attn_out"},
    }
    s = saes.load(_write(tmp_path / "v6", v6, {**_weights(), "threshold": torch.rand(6)}))
    assert (s.architecture, s.site()) == ("jumprelu", ("attention_output", 1))
    meta = {"d_in": 4, "expansion_factor": 2, "architecture": "standard", "meta": {"hook_name": "hook_embed"}}
    w = {**_weights(4, 8), "scaling_factor": torch.full((8,), 2.0)}
    s = saes.load(_write(tmp_path / "meta", {**meta, "finetuning_scaling_factor": True}, w))
    assert s.d_sae == 8 and torch.equal(s.W_dec, w["W_dec"] * 2.0)


@pytest.mark.parametrize(
    ("cfg", "tensors", "where"),
    [
        ({"d_sae": 6, "hook_name": "blocks.0.hook_resid_post"}, {}, "cfg.json  d_in: missing"),
        ({"d_in": 4, "d_sae": 6}, {}, "cfg.json  hook_name: missing"),
        ({"d_in": 4, "d_sae": 6, "hook_name": "h", "architecture": "relu2"}, {}, "architecture: 'relu2'"),
        ({"d_in": 4, "d_sae": 6, "hook_name": "h", "architecture": "topk"}, {}, "cfg.json  k: missing"),
        (
            {"d_in": 4, "d_sae": 6, "hook_name": "h", "normalize_activations": "zscore"},
            {},
            "normalize_activations: 'zscore'",
        ),
        (
            {"d_in": 4, "d_sae": 7, "hook_name": "h"},
            {},
            "sae_weights.safetensors  W_enc: shape [4, 6], expected [4, 7]",
        ),
        (
            {"d_in": 4, "d_sae": 6, "hook_name": "h", "architecture": "jumprelu"},
            {},
            "sae_weights.safetensors  threshold: missing tensor",
        ),
    ],
)
def test_malformed_files_name_file_and_field(tmp_path: Path, cfg: dict, tensors: dict, where: str) -> None:
    directory = _write(tmp_path / "bad", cfg, {**_weights(), **tensors})
    with pytest.raises(SAEFileError, match=None) as info:
        saes.load(directory)
    assert where in str(info.value), str(info.value)
    assert str(directory) in str(info.value)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(SAEFileError, match="not found"):
        saes.load(tmp_path / "nowhere")
    d = _write(tmp_path / "json", {"d_in": 4}, _weights())
    (d / "cfg.json").write_text("{not json")
    with pytest.raises(SAEFileError, match=r"cfg.json: not valid JSON"):
        saes.load(d)
    (d / "cfg.json").write_text("{}")
    (d / "sae_weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(SAEFileError, match=r"sae_weights.safetensors: not a readable safetensors"):
        saes.load(d)
    (d / "sae_weights.safetensors").unlink()
    with pytest.raises(SAEFileError, match=r"sae_weights.safetensors: missing"):
        saes.load(d)


def test_hf_reference_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SAEFileError, match="offline|Hub"):
        saes.load("hf://nobody/no-such-sae-repo/layer_2")
    with pytest.raises(SAEFileError, match="not an SAE reference"):
        saes.load("hf://justone")
