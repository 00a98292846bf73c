"""Mixture-of-experts components (`router_logits`, `experts_output`) against a hand-written MoE.

Tiny random models of several router families (softmax top-k: Mixtral, Qwen2-MoE with a shared
expert, OLMoE; sigmoid with a correction bias and group-limited top-k: DeepSeek-V3; top-k on the
logits with a bias: GPT-OSS; GraniteMoE, Jamba). The oracle is written here from the papers'
equations and the checkpoints' weights, not from ivx: router logits are `x @ W.T (+ b)` of the MoE
block's input, the experts' output is the routed experts' weighted sum, recomputed by hand from
the (possibly edited) logits. An edit of the logits must change the routing exactly as the hand
MoE does with the same edited logits; end to end, `ivx.run` with its exact shortcuts on and off
equals a plain forward whose MoE block is replaced, at one position, by the hand MoE.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml
from typer.testing import CliRunner

import ivx
from ivx.cli.app import app
from ivx.config.inputs import PromptRecord
from ivx.config.schema import Experiment
from ivx.core import interventions
from ivx.engine import decoding
from ivx.model import components, hooks, module_paths, moe
from ivx.recipes import generate
from tests.tiny import tokenizer

D, E, K, LAYERS = 32, 4, 2, 2
BASE = "When Mary and John went to the store , John gave a drink to"
SOURCE = "When Tom and James went to the park , James gave a ball to"
SHORTCUTS = ("prefix_reuse", "layer_reuse", "defer_head", "trim_final")
OFF = dict.fromkeys((*SHORTCUTS, "skip_noop"), False)  # every exact shortcut off
FAST = ("mixtral", "qwen2_moe", "deepseek_v3")
SLOW = ("olmoe", "gpt_oss", "granitemoe", "jamba")


def _config(arch: str, vocab: int) -> Any:
    import transformers as tf

    common = dict(
        vocab_size=vocab, hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=64, initializer_range=0.3, pad_token_id=0, bos_token_id=0, eos_token_id=0,
        num_experts_per_tok=K,
    )  # fmt: skip
    if arch == "mixtral":
        return tf.MixtralConfig(intermediate_size=16, num_local_experts=E, **common)
    if arch == "qwen2_moe":
        return tf.Qwen2MoeConfig(
            intermediate_size=32, moe_intermediate_size=16, shared_expert_intermediate_size=16, num_experts=E,
            norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[], **common,
        )  # fmt: skip
    if arch == "olmoe":
        return tf.OlmoeConfig(intermediate_size=16, num_experts=E, norm_topk_prob=True, **common)
    if arch == "deepseek_v3":
        return tf.DeepseekV3Config(
            intermediate_size=32, moe_intermediate_size=16, n_routed_experts=E, n_shared_experts=1, n_group=2,
            topk_group=1, first_k_dense_replace=1, norm_topk_prob=True, routed_scaling_factor=2.5,
            kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8,
            **{**common, "num_key_value_heads": 4},  # multi-head latent attention: as many as queries
        )  # fmt: skip
    if arch == "gpt_oss":
        return tf.GptOssConfig(
            intermediate_size=16,
            num_local_experts=E,
            head_dim=8,
            layer_types=["full_attention"] * LAYERS,
            **common,
        )
    if arch == "granitemoe":
        return tf.GraniteMoeConfig(intermediate_size=16, num_local_experts=E, **common)
    if arch == "jamba":
        return tf.JambaConfig(
            intermediate_size=16, num_experts=E, expert_layer_period=2, expert_layer_offset=1, attn_layer_period=2,
            attn_layer_offset=1, use_mamba_kernels=False, mamba_d_state=4, mamba_dt_rank=4, **common,
        )  # fmt: skip
    raise ValueError(arch)


@pytest.fixture(scope="module")
def tiny_moe(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """tiny_moe(arch) → (saved model directory, ivx.Model), built once per module."""
    cache: dict[str, tuple[Path, ivx.Model]] = {}

    def get(arch: str) -> tuple[Path, ivx.Model]:
        if arch not in cache:
            from transformers import AutoModelForCausalLM

            out = tmp_path_factory.mktemp(f"moe-{arch}")
            tok = tokenizer()
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(_config(arch, len(tok))).eval()
            with torch.no_grad():
                for name, buffer in model.named_buffers():
                    if name.endswith("e_score_correction_bias"):  # DeepSeek: a bias that changes routing
                        buffer.copy_(torch.randn_like(buffer) * 0.3)
            model.save_pretrained(out)
            tok.save_pretrained(out)
            cache[arch] = (out, ivx.Model(str(out)))
        return cache[arch]

    return get


def _moe_layer(lm: Any) -> int:
    """The last layer with a mixture of experts."""
    return max(
        i for i in range(lm.info.n_layers) if not lm.info.layers or "router_logits" in lm.info.layers[i]
    )


def _parts(lm: Any, layer: int) -> tuple[Any, Any, Any]:
    """(MoE module, router, experts) of `layer`, found by hand from the module tree."""
    block = components.blocks(lm.model)[layer]
    block_moe = next(m for m in block.modules() if hasattr(m, "experts") and m is not block)
    router = getattr(block_moe, "gate", None) or block_moe.router
    return block_moe, router, block_moe.experts


def _hand_logits(router: Any, x: torch.Tensor) -> torch.Tensor:
    """Router logits by hand: x @ W.T (+ b)."""
    out = x.float() @ router.weight.float().T  # [tokens, experts]
    bias = getattr(router, "bias", None)
    return out + bias.float() if isinstance(bias, torch.Tensor) else out


def _route(arch: str, router: Any, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights [tokens, k], experts [tokens, k]) of each family's routing, from the equations."""
    if arch == "deepseek_v3":  # sigmoid scores; choice with the correction bias, best groups only
        scores = logits.sigmoid()
        choice = scores + router.e_score_correction_bias
        groups = choice.view(len(choice), router.num_group, -1).topk(2, dim=-1)[0].sum(-1)  # [tokens, groups]
        keep = torch.zeros_like(groups).scatter_(1, groups.topk(router.topk_group, dim=-1)[1], 1.0)
        keep = keep.repeat_interleave(E // router.num_group, dim=1).bool()
        index = choice.masked_fill(~keep, float("-inf")).topk(K, dim=-1)[1]
        weight = scores.gather(1, index)
        return weight / (weight.sum(-1, keepdim=True) + 1e-20) * router.routed_scaling_factor, index
    if arch in ("gpt_oss", "granitemoe"):  # top-k of the logits, softmax over the chosen ones
        top, index = logits.topk(K, dim=-1)
        return top.softmax(-1), index
    probs = logits.softmax(-1)
    weight, index = probs.topk(K, dim=-1)
    if arch in ("mixtral", "olmoe"):  # renormalised top-k (Mixtral always; OLMoE with norm_topk_prob)
        weight = weight / weight.sum(-1, keepdim=True)
    return weight, index


def _expert(arch: str, experts: Any, e: int, x: torch.Tensor) -> torch.Tensor:
    """One expert's output by hand from the fused weights."""
    if arch == "gpt_oss":  # interleaved gate/up, clamped, biased
        h = x @ experts.gate_up_proj[e] + experts.gate_up_proj_bias[e]
        gate, up = h[..., ::2].clamp(max=experts.limit), h[..., 1::2].clamp(-experts.limit, experts.limit)
        return ((up + 1) * gate * torch.sigmoid(gate * experts.alpha)) @ experts.down_proj[
            e
        ] + experts.down_proj_bias[e]
    gate, up = (x @ experts.gate_up_proj[e].T).chunk(2, dim=-1)
    return (F.silu(gate) * up) @ experts.down_proj[e].T


def _routed(arch: str, router: Any, experts: Any, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """The routed experts' weighted sum [tokens, d] for these (possibly edited) logits."""
    weight, index = _route(arch, router, logits)
    out = torch.zeros_like(x)
    for t in range(len(x)):
        for j in range(K):
            out[t] += weight[t, j] * _expert(arch, experts, int(index[t, j]), x[t])
    return out


def _shared(block_moe: Any, x: torch.Tensor) -> torch.Tensor:
    """The shared experts' part of the MoE output (zero without them)."""
    if hasattr(block_moe, "shared_expert"):  # Qwen2-MoE: sigmoid-gated
        return torch.sigmoid(block_moe.shared_expert_gate(x)) * block_moe.shared_expert(x)
    if hasattr(block_moe, "shared_experts"):
        return block_moe.shared_experts(x)  # type: ignore[no-any-return]
    return torch.zeros_like(x)


def _ids(lm: Any, text: str) -> torch.Tensor:
    return torch.tensor([lm.tokenizer(text, add_special_tokens=False)["input_ids"]])


def _moe_input(lm: Any, layer: int, ids: torch.Tensor) -> torch.Tensor:
    """The MoE block's input [s, d] in a plain forward (a hand pre-hook)."""
    seen: dict[str, torch.Tensor] = {}
    block_moe = _parts(lm, layer)[0]
    handle = block_moe.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0].detach().clone()))
    with torch.no_grad():
        lm.model(input_ids=ids, use_cache=False)
    handle.remove()
    return seen["x"].reshape(-1, D)


def _check_family(arch: str, tiny_moe: Any) -> None:
    lm = tiny_moe(arch)[1].lm
    layer = _moe_layer(lm)
    block_moe, router, experts = _parts(lm, layer)
    sites = [
        components.resolve(lm.model, lm.info, c, layer)
        for c in ("router_logits", "experts_output", "mlp_output")
    ]
    ids = _ids(lm, BASE)
    x = _moe_input(lm, layer, ids)  # [s, d]
    with torch.no_grad(), hooks.capturing(lm.model, sites) as store:
        lm.model(input_ids=ids, use_cache=False)
    logits, routed, mlp = (store[s][0] for s in sites)
    hand = _hand_logits(router, x)
    torch.testing.assert_close(logits.float(), hand, atol=1e-5, rtol=1e-5)  # read: x @ W.T (+ b)
    with torch.no_grad():
        torch.testing.assert_close(routed, _routed(arch, router, experts, x, hand), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(mlp, routed + _shared(block_moe, x), atol=1e-5, rtol=1e-4)
    # edit: at one position, expert k's logit raised and the routed experts' lowered → the hand
    # MoE with the same edited logits (DeepSeek: k's group now wins the group-limited top-k)
    p = 3
    chosen = _route(arch, router, hand)[1][p].tolist()
    k = next(e for e in range(E) if e not in chosen)  # an expert this token was not routed to
    push = torch.zeros(1, E)
    push[0, chosen] = -30.0
    push[0, k] = 30.0
    patch = hooks.Patch(sites[0], torch.tensor([0]), torch.tensor([p]), interventions.addition(1.0), push)
    with torch.no_grad(), hooks.patching(lm.model, [patch]), hooks.capturing(lm.model, sites[1:2]) as store:
        lm.model(input_ids=ids, use_cache=False)
    edited = hand.clone()
    edited[p] += push[0]
    patched = store[sites[1]][0]  # [s, d]
    with torch.no_grad():
        expected = _routed(arch, router, experts, x, edited)
        assert int(k) in _route(arch, router, edited)[1][p].tolist()  # the token now goes to expert k
        assert int(k) not in _route(arch, router, hand)[1][p].tolist()
        torch.testing.assert_close(patched, expected, atol=1e-5, rtol=1e-4)
        assert float((patched[p] - routed[p]).abs().max()) > 1e-3  # the routing changed the output
        others = [i for i in range(len(x)) if i != p]
        torch.testing.assert_close(patched[others], routed[others])  # other tokens keep their routing
        if arch == "mixtral":  # renormalised softmax: expert k takes (almost) the whole weight
            torch.testing.assert_close(patched[p], _expert(arch, experts, k, x[p]), atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("arch", FAST)
def test_router_logits_and_experts_output_equal_a_hand_moe(arch: str, tiny_moe: Any) -> None:
    _check_family(arch, tiny_moe)


@pytest.mark.slow
@pytest.mark.parametrize("arch", SLOW)
def test_more_router_families_equal_a_hand_moe(arch: str, tiny_moe: Any) -> None:
    _check_family(arch, tiny_moe)


def _run_config(lm_dir: Path, kind: str, out: Path, batch: dict, positions: list[int], **extra: Any) -> dict:
    iv = {"kind": kind, "component": "router_logits", "layer": "$layer", "position": "$position", **extra}
    return {
        "name": "moe",
        "model": {"name": str(lm_dir), "bos": False},
        "prompts": [{"base": BASE, "source": SOURCE}],
        "sweep": {"layer": "all", "position": positions},
        "interventions": [iv],
        "metrics": ["top_k"],
        "batch": batch,
        "output": {"root": str(out), "logits": "last", "plots": False, "report": False},
    }


def _hand_run(lm: Any, arch: str, layer: int, position: int, new_logits: torch.Tensor) -> torch.Tensor:
    """Last-position logits of BASE with the MoE block of `layer` recomputed by hand at `position`
    from `new_logits` [experts] (a plain forward hook; no ivx code on the path)."""
    block_moe, router, experts = _parts(lm, layer)
    ids = _ids(lm, BASE)
    x = _moe_input(lm, layer, ids)

    def hook(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
        out = output.clone()
        edited = _hand_logits(router, x)
        edited[position] = new_logits
        row = _routed(arch, router, experts, x[position : position + 1], edited[position : position + 1])
        out.view(-1, D)[position] = (row + _shared(block_moe, x[position : position + 1]))[0]
        return out

    handle = block_moe.register_forward_hook(hook)
    try:
        with torch.no_grad():
            return lm.model(input_ids=ids, use_cache=False).logits[0, -1].float()
    finally:
        handle.remove()


RUNS = [  # (kind, batch settings, intervention fields); the defaults engage every exact shortcut
    pytest.param("addition", {}, {"vector": "expert1.safetensors"}, id="addition"),
    pytest.param("vanilla", {}, {"source": "source"}, id="vanilla"),
    pytest.param("vanilla", OFF, {"source": "source"}, id="vanilla-plain", marks=pytest.mark.slow),
    pytest.param("zero", {}, {}, id="zero", marks=pytest.mark.slow),
    pytest.param("scale", {}, {"value": -2.0}, id="scale", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("kind", "batch", "extra"), RUNS)
def test_runs_equal_a_hand_moe(kind: str, batch: dict, extra: dict, tiny_moe: Any, tmp_path: Path) -> None:
    """`ivx.run` on router_logits at both layers (the last one crosses the trimmed final block) and
    an early and the last position equals a plain forward with the hand MoE at that site; a
    steering vector of +25 on expert 1 routes the token there."""
    from safetensors.torch import save_file

    lm_dir, model = tiny_moe("mixtral")
    lm = model.lm
    last = len(_ids(lm, BASE)[0]) - 1
    push = torch.zeros(E)
    push[1] = 25.0
    save_file({"vector": push}, str(tmp_path / "expert1.safetensors"))
    extra = {k: str(tmp_path / v) if k == "vector" else v for k, v in extra.items()}
    run = model.run(_run_config(lm_dir, kind, tmp_path, batch, [2, last], **extra))
    assert len(run.results) == LAYERS * 2
    for row in run.results.itertuples():
        layer, pos = int(row.layer), int(row.position)
        router = _parts(lm, layer)[1]
        base = _hand_logits(router, _moe_input(lm, layer, _ids(lm, BASE)))[pos]
        new = {
            "vanilla": lambda: _hand_logits(router, _moe_input(lm, layer, _ids(lm, SOURCE)))[pos],
            "addition": lambda: base + push,
            "zero": lambda: torch.zeros_like(base),
            "scale": lambda: -2.0 * base,
        }[kind]()
        expected = _hand_run(lm, "mixtral", layer, pos, new)
        torch.testing.assert_close(run.tensors[f"cell{row.cell}"].float(), expected, atol=1e-5, rtol=1e-5)
    if not batch:  # trimming stays on for the run; only the last layer's forwards skip it
        shortcuts = run.manifest["shortcuts"]["shortcuts"]
        assert all(shortcuts[n]["on"] for n in SHORTCUTS)


def test_components_are_listed_only_on_moe_blocks(tiny_moe: Any, tmp_path: Path) -> None:
    """DeepSeek-V3's first block is dense: the MoE components exist at layer 1 only, and asking
    for them at layer 0 is a config problem at file:line naming the layers that have them."""

    lm_dir, model = tiny_moe("deepseek_v3")
    info = model.lm.info
    assert "router_logits" not in info.layers[0] and {"router_logits", "experts_output"} <= set(
        info.layers[1]
    )
    rows = {r["name"]: r for r in components.table(model.lm.model, info)}
    assert (
        rows["router_logits"]["shape"] == f"[b, s, {E}]"
        and "(layer 1 only)" in rows["router_logits"]["module"]
    )
    assert rows["experts_output"]["module"].startswith("model.layers.N.mlp.experts")
    cfg = _run_config(lm_dir, "zero", tmp_path, {}, [2])
    cfg["sweep"] = {"position": [2]}
    cfg["interventions"][0]["layer"] = 0
    path = tmp_path / "dense.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert "dense.yaml:" in result.output and "'router_logits' does not exist at layer 0" in result.output
    assert "it exists at layer 1" in result.output


def test_dense_models_have_no_moe_components(tiny_model_dir) -> None:
    lm = ivx.Model(str(tiny_model_dir("llama"))).lm
    assert not set(moe.COMPONENTS) & set(lm.info.components)
    with pytest.raises(components.ComponentError, match="'router_logits' does not exist in llama"):
        components.resolve(lm.model, lm.info, "router_logits", 0)


def test_a_router_without_a_linear_call_is_an_error(tiny_moe: Any) -> None:
    """A router whose forward never calls `linear` on its weight: RouterError, not a silent no-op."""
    lm = tiny_moe("mixtral")[1].lm
    site = components.resolve(lm.model, lm.info, "router_logits", 0)
    router = _parts(lm, 0)[1]

    def matmul_router(hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = hidden.reshape(-1, D) @ router.weight.T  # not F.linear: nothing to intercept
        weight, index = logits.softmax(-1).topk(K, dim=-1)
        return logits, weight / weight.sum(-1, keepdim=True), index

    router.forward = matmul_router
    try:
        with pytest.raises(moe.RouterError, match="without a linear call"):
            with torch.no_grad(), hooks.capturing(lm.model, [site]):
                lm.model(input_ids=_ids(lm, BASE), use_cache=False)
    finally:
        del router.forward


def _hand_generation(lm: Any, text: str, push: torch.Tensor, n: int) -> list[int]:
    """Greedy, full recompute per step, with +push on layer 0's router logits at prompt positions
    1 and -1 and at every generated token (`on: all`), through the hand MoE."""
    block_moe, router, experts = _parts(lm, 0)
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    length = len(ids)
    for _ in range(n):
        edited = [1, length - 1, *range(length, len(ids))]

        def hook(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
            x = args[0].reshape(-1, D)
            logits = _hand_logits(router, x)
            logits[edited] += push
            out = output.clone().view(-1, D)
            out[edited] = _routed("mixtral", router, experts, x[edited], logits[edited])
            return out.view_as(output)

        handle = block_moe.register_forward_hook(hook)
        try:
            with torch.no_grad():
                ids.append(int(lm.model(torch.tensor([ids]), use_cache=False).logits[0, -1].argmax()))
        finally:
            handle.remove()
    return ids[length:]


@pytest.mark.slow
def test_generation_with_edited_routing_equals_a_hand_loop(tiny_moe: Any, tmp_path: Path) -> None:
    """`ivx generate` (with the KV cache and without) routing every generated token to expert 2."""
    from safetensors.torch import save_file

    lm_dir, model = tiny_moe("mixtral")
    lm = model.lm
    push = torch.tensor([-20.0, -20.0, 20.0, -20.0])
    save_file({"vector": push}, str(tmp_path / "expert2.safetensors"))
    prompts = [BASE, "The Space Needle is in downtown"]
    want = [_hand_generation(lm, p, push, 4) for p in prompts]
    assert want != [_hand_generation(lm, p, torch.zeros(E), 4) for p in prompts]  # the routing matters
    iv = {"kind": "addition", "component": "router_logits", "layer": 0, "position": [1, -1], "on": "all"}
    for use_cache in (True, False):
        exp = Experiment.model_validate(
            {
                "model": {"name": str(lm_dir)},
                "prompts": [{"base": p} for p in prompts],
                "interventions": [{**iv, "vector": str(tmp_path / "expert2.safetensors")}],
                "generate": {"max_new_tokens": 4, "use_cache": use_cache},
            }
        )
        items, _ = generate.resolve(lm, exp, [PromptRecord(base=p) for p in prompts], tmp_path)
        got = decoding.run_generation(lm, prompts, items, exp.generate, 0)
        assert [row["token_ids"] for row in got] == want, use_cache


def test_a_router_by_module_path_is_refused(tiny_moe: Any) -> None:
    """The router module's output is the routing already computed from its logits: a module-path
    edit there would change nothing, so it is refused with a pointer to router_logits; its input
    (which does change the routing) and the experts module stay reachable."""

    lm = tiny_moe("mixtral")[1].lm
    blocks = "model.layers"
    out = "module:model.layers.{layer}.mlp.gate@output"
    why = module_paths.problem(lm.model, blocks, lm.info.n_layers, out, 0)
    assert why is not None and "router_logits" in why and "change nothing" in why
    for ok in (
        "module:model.layers.{layer}.mlp.gate@input",
        "module:model.layers.{layer}.mlp.experts@output",
    ):
        assert module_paths.problem(lm.model, blocks, lm.info.n_layers, ok, 0) is None
