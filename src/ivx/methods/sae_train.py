"""Training a sparse autoencoder on one site's activations: TopK or ReLU + L1, unit-norm decoder rows.

An SAE reads an activation x `[d_in]` and writes it as a sparse sum of decoder rows:
`z = f((x − b_dec) W_enc + b_enc)`, `x̂ = z W_dec + b_dec`. `topk` keeps the k largest
pre-activations (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"); the loss is the
squared error plus an auxiliary loss that reconstructs the residual error from the top `aux_k`
dead latents, so latents that stopped firing get gradient again. `standard` is a ReLU with an L1
penalty on the latents (Bricken et al. 2023, "Towards Monosemanticity"), whose dead latents are
resampled towards inputs it reconstructs badly. After every step the decoder rows are put back
to unit norm (the gradient's component along each row is removed first), so a latent's value is
its contribution's length.

Everything here is deterministic given the seed: the batch order is a seeded permutation per
epoch, resampling draws from a generator seeded by (seed, step), and the whole state (weights,
Adam moments, the steps since each latent fired, the history) round-trips through
`state_dict` / `load_state`, so a resumed run is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ivx.model.sae import SAE

if TYPE_CHECKING:
    import torch

PARAMS: tuple[str, ...] = ("W_enc", "b_enc", "W_dec", "b_dec")
_MIX = 1_000_003  # combines the seed with an epoch or step into one generator seed


@dataclass(frozen=True)
class Plan:
    """The resolved training settings (every default filled in, checked against the site)."""

    architecture: Literal["topk", "standard"]
    d_in: int
    d_sae: int
    k: int | None
    aux_k: int
    aux_coefficient: float
    l1_coefficient: float
    steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    decay_fraction: float
    dead_after: int
    resample_every: int | None
    seed: int


def generator(seed: int, salt: int) -> torch.Generator:
    """A CPU generator seeded by (seed, salt): batch orders, resampling and initialisation."""
    import torch

    return torch.Generator().manual_seed(seed * _MIX + salt)


def init(plan: Plan, mean: torch.Tensor) -> dict[str, torch.Tensor]:
    """Initial weights: random unit decoder rows, the encoder their transpose, b_dec the data mean."""
    import torch

    w_dec = torch.randn(plan.d_sae, plan.d_in, generator=generator(plan.seed, 0))  # [d_sae, d_in]
    w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True)
    return {
        "W_enc": w_dec.t().clone(),  # [d_in, d_sae]
        "b_enc": torch.zeros(plan.d_sae),
        "W_dec": w_dec,
        "b_dec": mean.clone().float(),  # [d_in]
    }


def pre_acts(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Encoder pre-activations `[n, d_sae]` of activations `[n, d_in]`."""
    return (x - params["b_dec"]) @ params["W_enc"] + params["b_enc"]


def activate(pre: torch.Tensor, plan: Plan) -> torch.Tensor:
    """Latents `[n, d_sae]`: the top k (ReLU'd) for topk, ReLU for standard."""
    import torch

    if plan.architecture == "standard":
        return torch.relu(pre)
    assert plan.k is not None
    top = pre.topk(plan.k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))


def decode(params: dict[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    """Reconstructions `[n, d_in]` of latents `[n, d_sae]`."""
    return z @ params["W_dec"] + params["b_dec"]


def _aux_loss(
    params: dict[str, torch.Tensor], pre: torch.Tensor, error: torch.Tensor, dead: torch.Tensor, plan: Plan
) -> torch.Tensor:
    """TopK's auxiliary loss: the top `aux_k` dead latents reconstruct the (detached) error."""
    import torch

    n_dead = int(dead.sum())
    if n_dead == 0 or plan.aux_coefficient == 0:
        return pre.new_zeros(())
    k_aux = min(plan.aux_k, n_dead)
    masked = torch.where(dead[None], pre, torch.full_like(pre, -torch.inf))  # [n, d_sae]
    top = masked.topk(k_aux, dim=-1)
    z_aux = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    recon = z_aux @ params["W_dec"]  # [n, d_in], no decoder bias: it models the error
    scale = min(n_dead / plan.aux_k, 1.0)
    return plan.aux_coefficient * scale * (recon - error).pow(2).sum(-1).mean()


def losses(
    params: dict[str, torch.Tensor], x: torch.Tensor, dead: torch.Tensor, plan: Plan
) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    """(total loss, its parts as floats, the latents `[n, d_sae]`) of one batch `[n, d_in]`."""
    pre = pre_acts(params, x)
    z = activate(pre, plan)
    x_hat = decode(params, z)
    mse = (x_hat - x).pow(2).sum(-1).mean()
    parts = {"mse": float(mse.detach()) / plan.d_in}
    total = mse
    if plan.architecture == "standard":
        l1 = z.sum(-1).mean()  # decoder rows have unit norm: |z_i| ||W_dec,i|| = z_i
        total = total + plan.l1_coefficient * l1
        parts["l1"] = float(l1.detach())
    else:
        aux = _aux_loss(params, pre, (x - x_hat).detach(), dead, plan)
        total = total + aux
        parts["aux"] = float(aux.detach())
    return total, parts, z


def lr_at(step: int, plan: Plan) -> float:
    """Learning rate at `step`: linear warm-up, constant, linear decay over the last fraction."""
    scale = 1.0
    if plan.warmup_steps and step < plan.warmup_steps:
        scale = (step + 1) / plan.warmup_steps
    decay = int(plan.steps * plan.decay_fraction)
    if decay and step >= plan.steps - decay:
        scale = min(scale, (plan.steps - step) / decay)
    return plan.lr * scale


@dataclass
class State:
    """Everything a training run carries from step to step (what a checkpoint holds)."""

    params: dict[str, torch.Tensor]
    optimizer: Any  # torch.optim.Adam over params
    since_fired: torch.Tensor  # [d_sae] steps since each latent last fired
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def start(plan: Plan, mean: torch.Tensor) -> State:
    """A fresh training state (initial weights, Adam)."""
    import torch

    params = {name: t.requires_grad_(True) for name, t in init(plan, mean).items()}
    optimizer = torch.optim.Adam([params[name] for name in PARAMS], lr=plan.lr)
    return State(params, optimizer, torch.zeros(plan.d_sae, dtype=torch.long))


def batch_indices(step: int, n: int, plan: Plan) -> torch.Tensor:
    """Indices `[batch]` of step `step`'s batch: a seeded permutation per epoch, cut in order."""
    size = min(plan.batch_size, n)
    per_epoch = n // size
    epoch, index = divmod(step, per_epoch)
    order = _permutation(n, plan.seed, epoch)
    return order[index * size : (index + 1) * size]


@functools.lru_cache(maxsize=2)
def _permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    import torch

    return torch.randperm(n, generator=generator(seed, 1 + epoch))


def _unit_rows(params: dict[str, torch.Tensor]) -> None:
    """Remove each decoder row's gradient component along the row (rows are renormalised after the step)."""
    w_dec = params["W_dec"]
    if w_dec.grad is not None:
        parallel = (w_dec.grad * w_dec).sum(-1, keepdim=True)  # [d_sae, 1]
        w_dec.grad -= parallel * w_dec


def train_step(state: State, acts: torch.Tensor, plan: Plan) -> dict[str, float]:
    """One optimisation step on the batch of `state.step`; returns its logged values."""
    import torch

    x = acts[batch_indices(state.step, acts.shape[0], plan)]  # [batch, d_in]
    dead = state.since_fired >= plan.dead_after  # [d_sae]
    for group in state.optimizer.param_groups:
        group["lr"] = lr_at(state.step, plan)
    state.optimizer.zero_grad(set_to_none=True)
    total, parts, z = losses(state.params, x, dead, plan)
    total.backward()
    _unit_rows(state.params)
    state.optimizer.step()
    with torch.no_grad():
        w_dec = state.params["W_dec"]
        w_dec /= w_dec.norm(dim=-1, keepdim=True)
        fired = (z > 0).any(0)  # [d_sae]
        state.since_fired += 1
        state.since_fired[fired] = 0
    entry = {
        "step": state.step + 1,
        "loss": float(total.detach()),
        **parts,
        "l0": float((z > 0).float().sum(-1).mean()),
        "dead_fraction": float(dead.float().mean()),
        "lr": lr_at(state.step, plan),
    }
    state.step += 1
    if _resample_due(state.step, plan):
        entry["resampled"] = float(resample(state, acts, plan))
    state.history.append(entry)
    return entry


def _resample_due(step: int, plan: Plan) -> bool:
    every = plan.resample_every
    if every is None or plan.architecture != "standard":
        return False
    return step % every == 0 and step < 0.8 * plan.steps


def resample(state: State, acts: torch.Tensor, plan: Plan) -> int:
    """Point dead latents at inputs drawn ∝ their squared error (Bricken et al. 2023); returns how many."""
    import torch

    dead = (state.since_fired >= plan.dead_after).nonzero().flatten()  # [n_dead]
    if dead.numel() == 0:
        return 0
    gen = generator(plan.seed, 10_000_000 + state.step)
    params = state.params
    with torch.no_grad():
        sample = acts[torch.randperm(acts.shape[0], generator=gen)[: 8 * plan.batch_size]]  # [m, d_in]
        error = (decode(params, activate(pre_acts(params, sample), plan)) - sample).pow(2).sum(-1)  # [m]
        picked = sample[torch.multinomial(error + 1e-12, dead.numel(), replacement=True, generator=gen)]
        direction = picked - params["b_dec"]
        direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # [n_dead, d_in]
        alive = state.since_fired < plan.dead_after
        enc_norm = params["W_enc"][:, alive].norm(dim=0).mean() if bool(alive.any()) else torch.tensor(1.0)
        params["W_dec"][dead] = direction
        params["W_enc"][:, dead] = direction.t() * enc_norm * 0.2
        params["b_enc"][dead] = 0.0
        for name, index in (("W_dec", (dead,)), ("W_enc", (slice(None), dead)), ("b_enc", (dead,))):
            moments = state.optimizer.state.get(params[name], {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in moments:
                    moments[key][index] = 0.0
    state.since_fired[dead] = 0
    return int(dead.numel())


def state_dict(state: State) -> dict[str, Any]:
    """The training state as plain tensors and lists (torch.save writes it)."""
    return {
        "params": {name: t.detach().clone() for name, t in state.params.items()},
        "optimizer": state.optimizer.state_dict(),
        "since_fired": state.since_fired.clone(),
        "step": state.step,
        "history": list(state.history),
    }


def load_state(plan: Plan, saved: dict[str, Any]) -> State:
    """The training state a checkpoint holds (weights, Adam moments, counters), ready to continue."""
    import torch

    params = {name: saved["params"][name].clone().requires_grad_(True) for name in PARAMS}
    optimizer = torch.optim.Adam([params[name] for name in PARAMS], lr=plan.lr)
    optimizer.load_state_dict(saved["optimizer"])
    return State(params, optimizer, saved["since_fired"].clone(), int(saved["step"]), list(saved["history"]))


def evaluate(params: dict[str, torch.Tensor], acts: torch.Tensor, plan: Plan) -> dict[str, float]:
    """Reconstruction MSE (per element), fraction of variance explained, L0 and dead fraction on `acts`."""
    import torch

    with torch.no_grad():
        z = activate(pre_acts(params, acts), plan)  # [n, d_sae]
        error = (decode(params, z) - acts).pow(2).sum()
        variance = (acts - acts.mean(0)).pow(2).sum()
        return {
            "mse": float(error) / acts.numel(),
            "fve": 1.0 - float(error) / max(float(variance), 1e-30),
            "l0": float((z > 0).float().sum(-1).mean()),
            "dead_fraction": float((~(z > 0).any(0)).float().mean()),
        }


def folded(params: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """Weights for raw activations from weights trained on activations × `scale`.

    With x' = s x: ((x − b_dec/s) W_enc + b_enc/s) is the pre-activation divided by s (TopK and
    ReLU commute with a positive scale), and z W_dec + b_dec/s is the reconstruction divided by s:
    the latents come out divided by s, the decoder rows stay unit norm."""
    return {
        "W_enc": params["W_enc"].detach().clone(),
        "b_enc": params["b_enc"].detach() / scale,
        "W_dec": params["W_dec"].detach().clone(),
        "b_dec": params["b_dec"].detach() / scale,
    }


def to_sae(
    params: dict[str, torch.Tensor],
    plan: Plan,
    hook_name: str,
    layer: int,
    metadata: dict[str, Any],
    dtype: str = "float32",
) -> SAE:
    """Trained weights (reading raw activations) as an `SAE` at `hook_name`, with SAELens metadata."""
    import torch

    cast = {name: params[name].detach().to(getattr(torch, dtype)).contiguous() for name in PARAMS}
    cfg = {"architecture": plan.architecture, "d_in": plan.d_in, "d_sae": plan.d_sae, "metadata": metadata}
    return SAE(
        cfg=cfg,
        architecture=plan.architecture,
        d_in=plan.d_in,
        d_sae=plan.d_sae,
        hook_name=hook_name,
        hook_layer=layer,
        k=float(plan.k) if plan.k is not None else None,
        W_enc=cast["W_enc"],
        b_enc=cast["b_enc"],
        W_dec=cast["W_dec"],
        b_dec=cast["b_dec"],
    )
