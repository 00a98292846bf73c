"""Attribution patching over SAE features: every feature × position of an SAE site at once.

With a sparse autoencoder at a site (`sae:` on an intervention, `model.sae`), the activation is
x = decode(f) + err, f = encode(x) and err the reconstruction error (Marks et al. 2024, "Sparse
feature circuits"). An edit f → f' changes x by exactly `sae.delta(f' − f)`, linear in f' − f, so
the AtP estimate of patching a feature i at position t (Nanda 2023; Kramár et al. 2024) is

    (f_src[t, i] − f_run[t, i]) · ∂metric/∂f[t, i],   ∂metric/∂f = delta's transpose · ∂metric/∂x

from the same one forward and one backward per prompt as activation-level attribution
(`attribution.Gradients`): the gradient at the site x, pulled back through the decoder. The
reconstruction error is its own node, (err_src − err_run) · ∂metric/∂x, and by the decoder's
linearity the feature nodes plus the error node of a position sum to the activation-level
estimate there (exactly, for SAEs without per-token normalisation; with `constant_norm_rescale`
/ `layer_norm` the error node also carries the change of the token's scale, so the identity
still holds by construction). `zero` ablates features: f_src = 0, and the error is untouched.

`attribution.Estimates` hands every edit with `sae:` to `FeatureTables`; GradDrop applies as for
activations (the dropped gradients are pulled back the same way); the QK fix does not apply.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from typing import TYPE_CHECKING

from ivx.engine import sae as sae_edits
from ivx.model import sae_format

if TYPE_CHECKING:
    import torch

    from ivx.methods.attribution import Estimates
    from ivx.model.components import Site
    from ivx.model.sae import SAE
    from ivx.plan.edits import Edit


KINDS: tuple[str, ...] = ("vanilla", "zero", "set", "scale", "addition")  # feature edits AtP estimates


@lru_cache(maxsize=4)
def _differentiable(sae: SAE) -> SAE:
    """The SAE with ordinary tensors (weights loaded under inference mode cannot enter autograd)."""
    import torch

    with torch.inference_mode(False):
        copies = {n: getattr(sae, n).clone() for n in sae_format.SHAPES if getattr(sae, n) is not None}
    return dataclasses.replace(sae, **copies)


def feature_grad(sae: SAE, run: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """∂metric/∂f [..., d_sae] from ∂metric/∂x [..., d_in]: the transpose of `sae.delta` at `run`."""
    import torch

    sae = _differentiable(sae) if sae.W_dec.is_inference() else sae
    with torch.inference_mode(False), torch.enable_grad():
        df = torch.zeros(*run.shape[:-1], sae.d_sae, dtype=sae.W_dec.dtype, device=run.device)
        df.requires_grad_()
        moved = sae.delta(df, like=run.detach().clone())  # [..., d_in], linear in df
        (out,) = torch.autograd.grad(moved, df, grad_outputs=grad.detach().clone().to(moved.dtype))
    return out


def node_changes(
    sae: SAE, run: torch.Tensor, source: torch.Tensor | None, grad: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Estimated metric change of patching each feature node and the error node at each position.

    `run` [S, seq, d_in] is the activation of the run patched into, `source` [seq, d_in] the run
    patched from (None: zero ablation of the features), `grad` [S, seq, d_in] ∂metric/∂x in the run.
    Returns ([S, seq, d_sae] per feature, [S, seq] the error node; zeros for an ablation).
    """
    import torch

    f_run = sae.encode(run)  # [S, seq, d_sae]
    g_f = feature_grad(sae, run, grad).to(f_run.dtype)  # [S, seq, d_sae]
    if source is None:
        return (-f_run) * g_f, torch.zeros(run.shape[:2], dtype=run.dtype, device=run.device)
    src = source.to(run.device).unsqueeze(0).expand_as(run)  # [S, seq, d_in]
    df = sae.encode(src) - f_run  # [S, seq, d_sae]
    error = (src - run).to(df.dtype) - sae.delta(df, like=run)  # [S, seq, d_in]
    return df * g_f, (error * grad.to(df.dtype)).sum(-1)


def _picked(edit: Edit, values: torch.Tensor, f_run: torch.Tensor | None) -> torch.Tensor:
    """[S] the sum of `values` [S, n, d_sae] over the features an edit acts on (`top` ranks f_run)."""
    if edit.top is not None:
        assert f_run is not None
        return values.gather(-1, f_run.topk(edit.top, dim=-1).indices).sum((1, 2))
    if edit.features is not None:
        return values[..., list(edit.features)].sum((1, 2))
    return values.sum((1, 2))


class FeatureTables:
    """Every SAE edit's estimate for one prompt, from the prompt's `attribution.Estimates` pass.

    Per (edit group, quantity, drop) one `[S, seq, d_sae]` table of feature-node estimates is
    built once and indexed by each cell; the error node's `[S, seq]` estimate sits beside it.
    """

    def __init__(self, est: Estimates) -> None:
        self.est = est
        self.executor = est.executor
        self.tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.features: dict[tuple, torch.Tensor] = {}

    def sae(self, edit: Edit) -> SAE:
        """The edit's SAE on the model's device (loaded once per process)."""
        assert edit.sae is not None
        return sae_edits.load(edit.sae, self.executor.cfg.path.parent, self.executor.lm.device)

    def _features(self, edit: Edit, site: Site) -> torch.Tensor:
        """f_run [S, seq, d_sae]: the edit's SAE features in the run patched into."""
        key = (edit.sae, edit.component, edit.layer)
        if key not in self.features:
            self.features[key] = self.sae(edit).encode(self.est._read(site, None, None))
        return self.features[key]

    def _source(self, sae: SAE, edit: Edit, positions: list[int]) -> torch.Tensor | None:
        """The source features [1, n, d_sae] a vanilla edit reads at `positions` (None otherwise)."""
        if edit.kind != "vanilla":
            return None
        return sae.encode(self.est._source(edit)[positions]).unsqueeze(0)

    def table(self, edit: Edit, quantity: str, drop: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """([S, seq, d_sae] feature estimates, [S, seq] error node) of an edit's kind at its site.

        The error node is the source run's error patched in (vanilla) — or, with `sae_error: drop`,
        the run's error removed — and zero for edits that leave the error alone."""
        key: tuple = (edit.sae, edit.component, edit.layer, edit.source, edit.kind, edit.value)
        key += (edit.coefficient, edit.sae_error, quantity, drop)
        if key not in self.tables:
            site = self.executor.site(edit.component, edit.layer)
            sae = self.sae(edit)
            run = self.est._read(site, None, None)  # [S, seq, d_in]
            grad = self.est._read(site, quantity, drop)  # [S, seq, d_in]
            if edit.kind == "vanilla" and edit.sae_error == "keep":
                self.tables[key] = node_changes(sae, run, self.est._source(edit), grad)
                return self.tables[key]
            f_run = self._features(edit, site)
            target = sae_edits.targets(edit, f_run, self._source(sae, edit, list(range(run.shape[1]))))
            feature = (target - f_run) * feature_grad(sae, run, grad).to(f_run.dtype)
            if edit.sae_error == "drop":  # the activation becomes decode(f'): the run's error leaves
                err = run.to(f_run.dtype) - sae.decode(f_run, like=run)  # [S, seq, d_in]
                error = -(err * grad.to(err.dtype)).sum(-1)
            else:
                error = run.new_zeros(run.shape[:2])
            self.tables[key] = (feature, error)
        return self.tables[key]

    def change(self, edit: Edit, quantity: str, drop: int | None) -> torch.Tensor:
        """[S] estimated change of `quantity` from one SAE edit: its features at its positions."""
        if edit.kind == "vanilla" and edit.source_positions != edit.positions:
            return self._moved(edit, quantity, drop)
        feature, error = self.table(edit, quantity, drop)
        positions = list(edit.positions)
        f_run = None
        if edit.top is not None:
            f_run = self._features(edit, self.executor.site(edit.component, edit.layer))[:, positions]
        total = _picked(edit, feature[:, positions], f_run)
        if edit.sae_error == "drop":
            total = total + error[:, positions].sum(1)
        return total

    def _moved(self, edit: Edit, quantity: str, drop: int | None) -> torch.Tensor:
        """[S] a vanilla edit whose source positions differ from the positions it writes."""
        site = self.executor.site(edit.component, edit.layer)
        sae = self.sae(edit)
        positions = list(edit.positions)
        run = self.est._read(site, None, None)[:, positions]  # [S, n, d_in]
        grad = self.est._read(site, quantity, drop)[:, positions]  # [S, n, d_in]
        f_run = sae.encode(run)  # [S, n, d_sae]
        df = sae_edits.targets(edit, f_run, self._source(sae, edit, list(edit.source_positions))) - f_run
        total = _picked(edit, df * feature_grad(sae, run, grad).to(f_run.dtype), f_run)
        if edit.sae_error == "drop":
            err = run.to(f_run.dtype) - sae.decode(f_run, like=run)
            total = total - (err * grad.to(err.dtype)).sum((1, 2))
        return total
