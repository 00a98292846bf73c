"""Component sites against independent oracles: output_hidden_states and residual identities."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ivx.model import components, hooks
from ivx.model import loading as models
from ivx.model.components import ComponentError

ARCHS = ("gpt2", "gpt_neox", "llama", "qwen2", "opt", "gemma", "mistral", "phi3", "gptj", "olmo")
TEXT = "When Mary and John went to the store , John gave a drink to"


def capture(lm, comps, layer=0):
    sites = {c: components.resolve(lm.model, lm.info, c, layer) for c in comps}
    ids = torch.tensor([lm.tokenizer(TEXT, add_special_tokens=False)["input_ids"]])
    with torch.no_grad(), hooks.capturing(lm.model, list(sites.values())) as store:
        out = lm.model(ids, output_hidden_states=True)
    return {c: store[s] for c, s in sites.items()}, out, ids


@pytest.mark.parametrize("arch", ARCHS)
def test_identities(arch: str, tiny_model_dir) -> None:
    lm = models.load(str(tiny_model_dir(arch)))
    acts, out, _ = capture(lm, lm.info.components)
    hs = out.hidden_states
    torch.testing.assert_close(acts["block_output"], hs[1])  # layer 0 of 2: no final norm yet
    torch.testing.assert_close(acts["block_input"], hs[0])
    emb = lm.model.get_input_embeddings()(
        torch.tensor([lm.tokenizer(TEXT, add_special_tokens=False)["input_ids"]])
    )
    torch.testing.assert_close(acts["embedding"], emb)
    # pre-LN (sequential or parallel) residual: out = in + attention + mlp
    torch.testing.assert_close(
        acts["block_output"],
        acts["block_input"] + acts["attention_output"] + acts["mlp_output"],
        atol=1e-5,
        rtol=1e-5,
    )
    if "residual_mid" in lm.info.components:
        torch.testing.assert_close(
            acts["residual_mid"], acts["block_input"] + acts["attention_output"], atol=1e-5, rtol=1e-5
        )
    else:
        assert arch in ("gpt_neox", "gptj")  # parallel residual: no mid-block residual stream
    info = lm.info
    assert acts["head_attention_value_output"].shape[-1] == info.n_heads * info.head_dim
    assert acts["key_output"].shape[-1] == info.n_kv_heads * info.head_dim
    assert acts["mlp_activation"].shape[-1] == info.d_mlp
    site = components.resolve(lm.model, info, "head_key_output", 0)
    assert site.n_heads == info.n_kv_heads and site.head_dim == info.head_dim
    raw = torch.randn(2, 5, site.width * site.groups)
    assert torch.equal(components.write(site, raw, components.read(site, raw)), raw)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox", "phi3", "opt"])
def test_qkv_equal_manual_projection(arch: str, tiny_model_dir) -> None:
    lm = models.load(str(tiny_model_dir(arch)))
    acts, _, _ = capture(lm, ["attention_input", "query_output", "key_output", "value_output"])
    x = acts["attention_input"]
    layer = dict(lm.model.named_modules())[components.resolve(lm.model, lm.info, "attention_input", 0).module]
    hd, nh = lm.info.head_dim, lm.info.n_heads
    if arch == "gpt2":
        q, k, v = layer.c_attn(x).split(lm.info.d_model, dim=-1)
    elif arch == "gpt_neox":
        qkv = layer.query_key_value(x).view(*x.shape[:-1], nh, 3 * hd)
        q, k, v = (t.reshape(*x.shape[:-1], nh * hd) for t in qkv.chunk(3, dim=-1))
    elif arch == "phi3":
        qkv = layer.qkv_proj(x)
        q, k, v = qkv.split([nh * hd, lm.info.n_kv_heads * hd, lm.info.n_kv_heads * hd], dim=-1)
    else:
        q, k, v = layer.q_proj(x), layer.k_proj(x), layer.v_proj(x)
    torch.testing.assert_close(acts["query_output"], q)
    torch.testing.assert_close(acts["key_output"], k)
    torch.testing.assert_close(acts["value_output"], v)


def test_errors_and_fallback(tiny_model_dir) -> None:
    lm = models.load(str(tiny_model_dir("llama")))
    with pytest.raises(ComponentError, match="did you mean 'mlp_output'"):
        components.resolve(lm.model, lm.info, "mlp_outptu", 0)
    with pytest.raises(ComponentError, match=r"layer 5 is out of range: the model has 2 layers \(0..1\)"):
        components.resolve(lm.model, lm.info, "block_output", 5)
    lm.model.config.model_type = "my_new_arch"  # not in the table: structural fallback
    info = components.describe(lm.model)
    assert info.layout == "fallback"
    assert {"block_input", "block_output", "attention_output", "mlp_output"} <= set(info.components)
    assert "head_key_output" not in info.components
    with pytest.raises(ComponentError, match="does not exist in my_new_arch"):
        components.resolve(lm.model, info, "head_key_output", 0)
    acts = {}
    for comp in ("block_output", "mlp_output"):
        site = components.resolve(lm.model, info, comp, 1)
        with torch.no_grad(), hooks.capturing(lm.model, [site]) as store:
            out = lm.model(torch.tensor([[3, 4, 5]]), output_hidden_states=True)
        acts[comp] = store[site]
    assert acts["mlp_output"].shape == (1, 3, info.d_model)
    # last block output goes through the final norm before hidden_states[-1]
    torch.testing.assert_close(lm.model.model.norm(acts["block_output"]), out.hidden_states[-1])


def test_offline_unknown_model_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelLoadError) as info:
        models.load("definitely-not/a-model")
    message = str(info.value)
    assert "definitely-not/a-model" in message and "HF_HUB_OFFLINE" in message and "local copy" in message
    with pytest.raises(models.ModelLoadError, match="does not exist"):
        models.load("./no/such/dir")


def test_unreachable_hub_is_a_clear_error_without_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for name in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    assert not models.hub_reachable()
    with pytest.raises(models.ModelLoadError) as info:
        models.load("someone/not-cached-model")
    message = str(info.value)
    assert (
        "someone/not-cached-model" in message
        and f"127.0.0.1:{port}" in message
        and "cannot be reached" in message
    )


def test_broken_local_copy_names_the_directory(tiny_model_dir, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "broken"
    shutil.copytree(tiny_model_dir("gpt2"), copy)
    (copy / "model.safetensors").unlink()
    with pytest.raises(models.ModelLoadError, match=f"from {copy}"):
        models.load(str(copy))
    # the structure alone (meta device) needs no weight file: what `ivx validate` uses
    lm = models.load(str(copy), weights=False)
    assert lm.info.n_layers == 2 and lm.device.type == "meta"
    assert next(lm.model.parameters()).is_meta


def test_components_table_lists_heads(tiny_model_dir) -> None:
    lm = models.load(str(tiny_model_dir("llama")))
    rows = {r["name"]: r for r in components.table(lm.model, lm.info)}
    assert rows["head_key_output"]["shape"] == "[b, s, 2 heads × 8]"
    assert rows["block_output"]["module"] == "model.layers.N"


def test_models_that_cannot_be_built_without_weights_still_run(
    tiny_model_dir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If a model's own init code needs real tensors, the structural pre-check steps aside."""
    import yaml
    from transformers import AutoModelForCausalLM

    from ivx.recipes import run as experiment

    def refuse(*args, **kwargs):
        raise RuntimeError("Tensor.item() cannot be called on meta tensors")

    model_dir = tiny_model_dir("gpt2")
    monkeypatch.setattr(AutoModelForCausalLM, "from_config", refuse)
    with pytest.raises(models.MetaUnsupported, match="--weights"):
        models.load(str(model_dir), weights=False)
    cfg = {
        "name": "m",
        "model": {"name": str(model_dir)},
        "prompts": [
            {"base": "When Mary and John went to the store , John gave a drink to", "target": " Mary"}
        ],
        "interventions": [{"kind": "zero", "component": "mlp_output", "layer": 1, "position": -1}],
        "output": {"plots": False},
    }
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_dir = experiment.run(path, out_root=str(tmp_path / "runs"), progress=False)
    assert (run_dir / "results.jsonl").read_text().count("\n") == 1
