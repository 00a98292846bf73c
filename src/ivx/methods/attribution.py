"""Attribution patching: every cell's effect estimated from one gradient per prompt (AtP, AtP*).

Exact patching runs a forward pass per cell. Attribution patching (Nanda 2023; Kramár et al.
2024, "AtP*: An efficient and scalable method for localizing LLM behaviour to components")
linearises the metric around the run being patched INTO (the corrupted run of a trace, the
base run of a patching experiment): for a site n with activation `a_run` there and `a_src` in
the run patched FROM,

    metric(patched) − metric(run) ≈ (a_src − a_run) · ∂metric/∂n  (gradient taken in the run)

so per prompt (all noise samples as batch rows) one forward of the source run (captured by the
exact executor's `prepare`), one forward of the run with every needed site tracked and one
backward per metric quantity give the estimate of every cell: site × layer × head × position.

A `mean` or `resample` ablation is estimated the same way, with `a_src` the value it writes (the
site's mean over the reference set, or another record's activation; `engine.ablation`).

Estimated metrics are the linear estimate of each quantity's change, added to the run's value:
`target_prob`, `target_logit`, `logit_diff`, `kl`; `indirect_effect` = estimated p_patched −
p_corrupted; the normalised forms divide as the exact path does. Rows carry `approximate: true`.

AtP* options: `qk_fix` computes the attention pattern exactly when a query or key is patched
(the softmax recomputed per query position with the patched logit(s)) and linearises only after
the pattern, which is exact up to the attention output (see `qkfix`); `grad_drop` adds the
GradDrop score 1/(L−1) Σ_ℓ |estimate with layer ℓ's residual-branch gradient dropped|.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from ivx.config import sweep as sweeps
from ivx.config.fields import is_ref
from ivx.config.loader import LoadedConfig
from ivx.core import interventions, metrics
from ivx.core.errors import ConfigError, Problem
from ivx.engine.loop import CellOutput
from ivx.methods import qkfix, sae_attribution
from ivx.model import components, hooks

if TYPE_CHECKING:
    import torch

    from ivx.engine.executor import Executor
    from ivx.model.components import Site
    from ivx.plan.edits import Edit
    from ivx.plan.grid import Cell

# requested metric → the per-row quantity whose gradient estimates it
QUANTITY: dict[str, str] = {
    name: m.quantity for name, m in metrics.METRICS.items() if m.estimable and m.quantity is not None
}
QK_COMPONENTS = frozenset({"query_output", "key_output", "head_query_output", "head_key_output"})


def check(cfg: LoadedConfig) -> list[Problem]:
    """Config problems of `method: attribution` (vanilla patches, estimable metrics)."""
    exp = cfg.experiment
    problems: list[Problem] = []
    for i, iv in enumerate(exp.interventions):
        kinds = sweeps.axis_values(exp.sweep).get(iv.kind[1:], []) if is_ref(iv.kind) else [iv.kind]
        for kind in kinds if isinstance(kinds, list) else []:
            if iv.sae is not None and kind not in sae_attribution.KINDS:
                problems.append(
                    cfg.problem(
                        ("interventions", i, "kind"),
                        f"method: attribution estimates SAE feature edits of kind "
                        f"{', '.join(sae_attribution.KINDS)}, got {kind!r} (use method: exact)",
                    )
                )
            elif iv.sae is None and kind not in ("vanilla", "VanillaIntervention", "mean", "resample"):
                problems.append(
                    cfg.problem(
                        ("interventions", i, "kind"),
                        f"method: attribution estimates `vanilla` patches and `mean` / `resample` "
                        f"ablations only, got {kind!r} (use method: exact)",
                    )
                )
        for field in ("vector", "sever", "contrast"):
            if getattr(iv, field) is not None:
                problems.append(
                    cfg.problem(
                        ("interventions", i, field),
                        f"method: attribution copies activations from a run; `{field}` is not "
                        "supported (use method: exact)",
                    )
                )
    for j, name in enumerate(exp.metrics):
        if name not in QUANTITY:
            problems.append(
                cfg.problem(
                    ("metrics", j),
                    f"method: attribution cannot estimate {name!r}; estimable: {', '.join(QUANTITY)}",
                )
            )
    return problems


def check_model(cfg: LoadedConfig, lm: Any) -> None:
    """Model-aware problems of `method: attribution` (the QK fix's architectures): ConfigError."""

    reason = qkfix.unsupported(lm)
    if cfg.experiment.attribution.qk_fix and reason:
        raise ConfigError([cfg.problem(("attribution", "qk_fix"), f"{reason}; set it to false")])


class Gradients:
    """One tracked forward of the run being patched into, and the metric gradients at every site.

    `acts[key]` and `grads[quantity][drop][key]` are `[samples, seq, width]` for each hooked
    (module, side); drop None is the plain gradient, drop ℓ has layer ℓ's branch dropped.
    """

    def __init__(self, executor: Executor, prompt: int, sites: list[Site], quantities: list[str]) -> None:
        import torch

        self.executor = executor
        self.prompt = prompt
        lm = executor.lm
        p = executor.prompts[prompt]
        S = self.samples = executor.samples
        grad_drop = executor.exp.attribution.grad_drop
        drops: list[int | None] = [None] + (list(range(lm.info.n_layers)) if grad_drop else [])
        state: dict[str, int] = {}
        with torch.inference_mode(False), torch.enable_grad():
            ids = torch.tensor([executor.base.corrupt_ids.get(prompt, p.base_ids)], device=lm.device)
            ids = ids.repeat(S, 1)
            with (
                hooks.patching(lm.model, self._corruption()),
                hooks.branch_gates(components.blocks(lm.model), state) if grad_drop else nullcontext(),
                hooks.tracking(lm.model, sites) as store,
            ):
                logits = lm.model(input_ids=ids).logits[:, -1].float()  # [S, vocab]
            values = self._quantities(logits, quantities)
            keys = list(store)
            self.values = {q: float(values[q].detach().mean()) for q in quantities}
            self.grads: dict[str, dict[int | None, dict[tuple[str, str], torch.Tensor]]] = {}
            for q in quantities:
                self.grads[q] = {}
                for drop in drops:
                    state["drop"] = -1 if drop is None else drop
                    grads = torch.autograd.grad(
                        values[q].sum(), [store[k] for k in keys], retain_graph=True, allow_unused=True
                    )
                    self.grads[q][drop] = {
                        k: self._3d(g if g is not None else torch.zeros_like(store[k]))
                        for k, g in zip(keys, grads, strict=True)
                    }
            self.acts = {k: self._3d(store[k].detach()) for k in keys}

    def _3d(self, raw: torch.Tensor) -> torch.Tensor:
        return raw.view(self.samples, -1, raw.shape[-1]) if raw.dim() == 2 else raw

    def _corruption(self) -> list[hooks.Patch]:
        """The noise corruption of the exact executor's runs, as a patch of the embeddings."""
        import torch

        executor = self.executor
        positions = executor.plan.corrupt_positions[self.prompt]
        if not executor.base.noise or not positions:
            return []
        S = self.samples
        device = executor.lm.device
        return [
            hooks.Patch(
                site=executor.site("embedding", 0),
                rows=torch.arange(S).repeat_interleave(len(positions)).to(device),
                positions=torch.tensor(positions).repeat(S).to(device),
                fn=interventions.add_noise,
                source=executor.base.noise[self.prompt].reshape(S * len(positions), -1).clone().to(device),
            )
        ]

    def _quantities(self, logits: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
        import torch

        p = self.executor.prompts[self.prompt]
        n = len(logits)
        target = torch.full((n,), -1 if p.target_id is None else p.target_id)
        foil = torch.full((n,), -1 if p.foil_id is None else p.foil_id)
        ref = None
        if "kl" in names:
            ref = self.executor.base.reference_logits(self.prompt).unsqueeze(0).expand(n, -1).clone()
        values = metrics.row_values(logits, target.to(logits.device), foil.to(logits.device), ref, rank=False)
        return {q: values[q] for q in names}


def _mask(site: Site, edit: Edit, device: Any) -> torch.Tensor:
    """[dim] 0/1 weights of the component's entries an edit writes (heads × subspace)."""
    import torch

    mask = torch.zeros(site.n_heads, site.head_dim, device=device)
    heads = list(edit.heads) if edit.heads is not None else list(range(site.n_heads))
    dims = list(edit.subspace) if edit.subspace is not None else list(range(site.head_dim))
    if edit.heads is None and edit.subspace is not None:  # subspace over the whole vector
        flat = torch.zeros(site.dim, device=device)
        flat[dims] = 1.0
        return flat
    for h in heads:
        mask[h, dims] = 1.0
    return mask.reshape(site.dim)


class Estimates:
    """Every cell's estimate for one prompt, from one `Gradients` pass (tables cached per site)."""

    def __init__(self, executor: Executor, prompt: int, cells: list[Cell]) -> None:

        self.executor = executor
        self.prompt = prompt
        self.quantities = list(dict.fromkeys(QUANTITY[m] for m in executor.exp.metrics))
        self.qk_fix = executor.exp.attribution.qk_fix and qkfix.unsupported(executor.lm) is None
        sites: dict[Site, None] = {}
        for cell in cells:
            for edit in cell.edits:
                sites[executor.site(edit.component, edit.layer)] = None
                if self.qk_fix and edit.component in QK_COMPONENTS:
                    sites[executor.site("attention_value_output", edit.layer)] = None
        self.grads = Gradients(executor, prompt, list(sites), self.quantities)
        self.tables: dict[tuple, torch.Tensor] = {}
        self.features = sae_attribution.FeatureTables(self)  # edits with `sae:`

    def _source(self, edit: Edit) -> torch.Tensor:
        """The activation patched in: `[source seq, dim]` of the clean base or source run, or the
        value a mean / resample ablation writes (`engine.ablation`)."""
        if edit.kind in ("mean", "resample"):
            length = self.executor.prompts[self.prompt].length
            ablated = self.executor.engine.patches.ablations.sequence(self.prompt, edit, length)
            return ablated.to(self.executor.lm.device)
        base = self.executor.base
        acts = base.clean_acts if edit.source == "base" else base.source_acts
        return acts[(edit.component, edit.layer)][self.prompt].to(self.executor.lm.device)

    def _read(self, site: Site, quantity: str | None, drop: int | None) -> torch.Tensor:
        """The run's activation (quantity None) or a metric gradient at a site: [S, seq, dim]."""

        key = (site.module, site.hook)
        raw = self.grads.acts[key] if quantity is None else self.grads.grads[quantity][drop][key]
        return components.read(site, raw)

    def _table(self, edit: Edit, site: Site, quantity: str, drop: int | None) -> torch.Tensor:
        """[S, seq, heads] estimate of patching each position (and head) of a site alone."""

        key = (edit.component, edit.layer, edit.source, edit.kind, edit.index, quantity, drop)
        if key not in self.tables:
            if self.qk_fix and edit.component in QK_COMPONENTS:
                z = self.executor.site("attention_value_output", edit.layer)
                qkv = self.grads.acts[(site.module, site.hook)]
                part = edit.component.removeprefix("head_")[0]
                full = qkfix.table(
                    self.executor.lm, edit.layer, part, qkv, self._source(edit), self._read(z, quantity, drop)
                )
                self.tables[key] = full if site.n_heads > 1 else full.sum(-1, keepdim=True)
            else:
                act = self._read(site, None, None)
                delta = (self._source(edit).unsqueeze(0) - act) * self._read(site, quantity, drop)
                self.tables[key] = delta.view(*delta.shape[:2], site.n_heads, site.head_dim).sum(-1)
        return self.tables[key]

    def _edit(self, edit: Edit, quantity: str, drop: int | None) -> torch.Tensor:
        """[S] estimated change of `quantity` from one edit."""
        if edit.sae is not None:
            return self.features.change(edit, quantity, drop)
        site = self.executor.site(edit.component, edit.layer)
        positions = list(edit.positions)
        ablation = edit.kind in ("mean", "resample")  # its values sit at the edited positions
        source_positions = edit.positions if ablation else edit.source_positions
        if source_positions == edit.positions and edit.subspace is None:
            table = self._table(edit, site, quantity, drop)[:, positions]  # [S, n, heads]
            if edit.heads is not None and site.n_heads > 1:
                table = table[:, :, list(edit.heads)]
            return table.sum((1, 2))
        act = self._read(site, None, None)[:, positions]  # [S, n, dim]
        source = self._source(edit)[list(source_positions)].unsqueeze(0)  # [1, n, dim]
        delta = (source - act) * _mask(site, edit, act.device)
        return (delta * self._read(site, quantity, drop)[:, positions]).sum((1, 2))

    def _change(self, cell: Cell, quantity: str, drop: int | None) -> torch.Tensor:
        """[S] estimated change of `quantity` from all edits of a cell (zero without edits)."""
        import torch

        total = torch.zeros(self.grads.samples, device=self.executor.lm.device)
        for edit in cell.edits:
            total = total + self._edit(edit, quantity, drop)
        return total

    def cell(self, cell: Cell) -> dict[str, float]:
        """Sample-averaged estimated change of every quantity for one cell."""
        return {q: float(self._change(cell, q, None).mean()) for q in self.quantities}

    def grad_drop(self, cell: Cell) -> float:
        """GradDrop score of the first quantity: 1/(L−1) Σ_ℓ |estimate with layer ℓ dropped|."""
        q = self.quantities[0]
        n_layers = self.executor.lm.info.n_layers
        total = sum(float(self._change(cell, q, drop).abs().mean()) for drop in range(n_layers))
        return total / max(1, n_layers - 1)


def execute(executor: Executor, cells: list[Cell]) -> Iterator[list[CellOutput]]:
    """Estimate cells prompt by prompt (after `executor.prepare()`); rows from the one row builder.

    Each prompt's gradients track the sites of all its cells in the plan, not only of those asked
    for, so a resumed run or a backend task estimates every cell from the same tracked forward.
    """

    check_model(executor.cfg, executor.lm)
    by_prompt: dict[int, list[Cell]] = defaultdict(list)
    for cell in cells:
        by_prompt[cell.prompt].append(cell)
    planned: dict[int, list[Cell]] = defaultdict(list)
    for cell in executor.plan.cells:
        if cell.prompt in by_prompt:
            planned[cell.prompt].append(cell)
    for prompt, mine in by_prompt.items():
        est = Estimates(executor, prompt, planned[prompt] or mine)
        yield [CellOutput(cell, _row(executor, est, cell), None, {}) for cell in mine]


def _row(executor: Executor, est: Estimates, cell: Cell) -> dict[str, Any]:
    """A row like the exact path's (`engine.rows`), plus `grad_drop` (if on) and `approximate`."""
    change = est.cell(cell)
    patched = {q: est.grads.values[q] + change[q] for q in change}
    extra: dict[str, Any] = {}
    if executor.exp.attribution.grad_drop:
        extra["grad_drop"] = est.grad_drop(cell)
    extra["approximate"] = True
    return executor.engine.rows.row(cell, patched, run=est.grads.values, extra=extra)
