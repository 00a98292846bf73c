"""SAE training math against hand computations: TopK / ReLU latents, the auxiliary loss, unit decoder
rows, the folded normalisation, resampling, determinism and bit-identical resumption."""

from __future__ import annotations

import dataclasses
import io

import pytest
import torch

from ivx.methods import sae_data
from ivx.methods import sae_train as T


def plan(**changes: object) -> T.Plan:
    base = T.Plan(
        architecture="topk",
        d_in=8,
        d_sae=32,
        k=3,
        aux_k=4,
        aux_coefficient=1 / 32,
        l1_coefficient=1.0,
        steps=40,
        batch_size=16,
        lr=3e-3,
        warmup_steps=2,
        decay_fraction=0.2,
        dead_after=5,
        resample_every=None,
        seed=0,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def sparse_data(n: int = 400, d_in: int = 8, atoms: int = 12, seed: int = 1) -> torch.Tensor:
    """Activations that are sums of 2 of `atoms` unit directions with positive weights."""
    gen = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(atoms, d_in, generator=gen)
    dictionary /= dictionary.norm(dim=-1, keepdim=True)
    codes = torch.zeros(n, atoms)
    for i in range(n):
        picked = torch.randperm(atoms, generator=gen)[:2]
        codes[i, picked] = torch.rand(2, generator=gen) + 0.5
    return codes @ dictionary + 0.3  # [n, d_in], an offset for b_dec to find


def test_latents_and_reconstruction_match_a_hand_computation() -> None:
    p = plan()
    params = T.init(p, torch.zeros(8))
    params = {
        k: v + 0.01 * torch.randn(v.shape, generator=torch.Generator().manual_seed(3))
        for k, v in params.items()
    }
    x = sparse_data(5)
    pre = (x - params["b_dec"]) @ params["W_enc"] + params["b_enc"]
    z = T.activate(T.pre_acts(params, x), p)
    for row in range(5):  # the k largest pre-activations survive, ReLU'd; everything else is 0
        keep = pre[row].argsort(descending=True)[:3]
        expect = torch.zeros(32)
        expect[keep] = pre[row, keep].clamp_min(0)
        assert torch.equal(z[row], expect)
    relu = T.activate(T.pre_acts(params, x), plan(architecture="standard", k=None))
    assert torch.equal(relu, pre.clamp_min(0))
    assert torch.allclose(T.decode(params, z), z @ params["W_dec"] + params["b_dec"])


def test_aux_loss_reconstructs_the_error_from_the_top_dead_latents() -> None:
    p = plan(aux_k=2, aux_coefficient=0.5)
    params = T.init(p, torch.zeros(8))
    x = sparse_data(6)
    dead = torch.zeros(32, dtype=torch.bool)
    dead[[1, 4, 9]] = True
    _, parts, z = T.losses(params, x, dead, p)
    pre = T.pre_acts(params, x)
    error = x - T.decode(params, z)
    total = 0.0
    for row in range(6):
        dead_pre = {i: float(pre[row, i]) for i in (1, 4, 9)}
        top = sorted(dead_pre, key=dead_pre.__getitem__, reverse=True)[:2]
        recon = sum(max(dead_pre[i], 0.0) * params["W_dec"][i] for i in top)
        total += float((recon - error[row]).pow(2).sum())
    scale = min(3 / 2, 1.0)
    assert parts["aux"] == pytest.approx(0.5 * scale * total / 6, rel=1e-5)
    _, none, _ = T.losses(params, x, torch.zeros(32, dtype=torch.bool), p)
    assert none["aux"] == 0.0


def test_training_keeps_unit_decoder_rows_and_learns_sparse_data() -> None:
    acts = sparse_data()
    p = plan(steps=120, lr=2e-2)
    state = T.start(p, acts.mean(0))
    first = T.evaluate(state.params, acts, p)
    for _ in range(p.steps):
        T.train_step(state, acts, p)
        norms = state.params["W_dec"].norm(dim=-1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    last = T.evaluate(state.params, acts, p)
    assert last["fve"] > 0.92 and first["fve"] < 0.5
    assert last["mse"] < first["mse"] / 5
    assert last["l0"] <= 3


def test_standard_sae_l1_and_resampling() -> None:
    acts = sparse_data()
    p = plan(architecture="standard", k=None, steps=60, dead_after=3, resample_every=20)
    state = T.start(p, acts.mean(0))
    with torch.no_grad():
        state.params["b_enc"][:10] = -100.0  # latents 0..9 can never fire: dead after 3 steps
    resampled = [T.train_step(state, acts, p).get("resampled") for _ in range(20)]
    assert resampled[-1] is not None and resampled[-1] >= 10
    w_dec = state.params["W_dec"]
    assert torch.allclose(w_dec.norm(dim=-1), torch.ones(32), atol=1e-5)
    assert torch.all(state.params["b_enc"][:10] == 0)  # resampled: bias reset, pointing at inputs
    moments = state.optimizer.state[state.params["b_enc"]]
    assert torch.all(moments["exp_avg"][:10] == 0) and torch.all(moments["exp_avg_sq"][:10] == 0)
    with torch.no_grad():  # the logged L1 is the mean latent sum of the step's batch, before the step
        batch = acts[T.batch_indices(state.step, 400, p)]
        z = T.activate(T.pre_acts(state.params, batch), p)
        mse = (T.decode(state.params, z) - batch).pow(2).sum(-1).mean()
    entry = T.train_step(state, acts, p)
    assert entry["l1"] == pytest.approx(float(z.sum(-1).mean()), rel=1e-5)
    assert entry["loss"] == pytest.approx(float(mse) + p.l1_coefficient * entry["l1"], rel=1e-5)


def test_folded_weights_read_raw_activations() -> None:
    acts = sparse_data() * 7.0
    scale = sae_data.norm_scale(acts)
    assert float((acts * scale).norm(dim=-1).mean()) == pytest.approx(8**0.5, rel=1e-5)
    p = plan()
    state = T.start(p, (acts * scale).mean(0))
    for _ in range(20):
        T.train_step(state, acts * scale, p)
    raw = T.folded(state.params, scale)
    z_scaled = T.activate(T.pre_acts(state.params, acts * scale), p)
    z_raw = T.activate(T.pre_acts(raw, acts), p)
    assert torch.allclose(z_raw, z_scaled / scale, atol=1e-5)
    assert torch.allclose(T.decode(raw, z_raw), T.decode(state.params, z_scaled) / scale, atol=1e-5)


def test_batches_cover_each_epoch_once_and_training_is_seeded() -> None:
    p = plan(batch_size=50)
    seen = torch.cat([T.batch_indices(s, 400, p) for s in range(8)])
    assert sorted(seen.tolist()) == list(range(400))  # one epoch: every row once
    assert not torch.equal(T.batch_indices(0, 400, p), T.batch_indices(8, 400, p))  # reshuffled
    acts = sparse_data()

    def run(seed: int) -> dict[str, torch.Tensor]:
        q = plan(seed=seed, steps=10)
        state = T.start(q, acts.mean(0))
        for _ in range(q.steps):
            T.train_step(state, acts, q)
        return state.params

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(a[k], b[k]) for k in T.PARAMS)
    assert not torch.equal(a["W_dec"], c["W_dec"])


def test_a_saved_state_continues_bit_identically() -> None:
    acts = sparse_data()
    p = plan(steps=30, dead_after=2)
    straight = T.start(p, acts.mean(0))
    for _ in range(p.steps):
        T.train_step(straight, acts, p)
    first = T.start(p, acts.mean(0))
    for _ in range(13):
        T.train_step(first, acts, p)
    buffer = io.BytesIO()
    torch.save(T.state_dict(first), buffer)
    resumed = T.load_state(p, torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    while resumed.step < p.steps:
        T.train_step(resumed, acts, p)
    assert all(torch.equal(straight.params[k], resumed.params[k]) for k in T.PARAMS)
    assert straight.history == resumed.history
    assert torch.equal(straight.since_fired, resumed.since_fired)
