"""Path patching: the effect of sender components on receiver components only.

Activation patching asks how much restoring one site moves the output through *every* path
downstream of it. Path patching (Wang et al. 2022, "Interpretability in the wild"; Goldowsky-Dill
et al. 2023, "Localizing model behavior with path patching") asks how much of that effect travels
from a sender to chosen receivers directly, through the residual stream and nothing else:

1. the run patched FROM gives the sender's activation: the records' source run, or with
   `corrupt:` the clean run (or the source run, as exact patching chooses; captured once per
   prompt by the executor) — or, for a `mean` / `resample` sender, the ablation's value (the
   sender's mean over a reference set, another record's value), which ablates the paths only;
2. the run patched INTO — the base run, or with `corrupt:` the corrupted run — with the sender
   patched in and every other attention head and MLP output *frozen* at its value in that run
   records the receivers' inputs (queries, keys, values, MLP inputs, the final residual stream,
   ...): only the direct sender → receiver path differs;
3. the run patched into with only those receiver inputs patched gives the logits and the metric.

Noise samples are batch rows (each frozen at its own sample's values) and averaged as in exact
patching; rows come from the one row builder (`engine.rows`). In YAML, the sender is an ordinary
`vanilla` intervention (sweepable: `layer: all, head: all`) with
`receivers: [{component, layer, head?, position?}]`. Each cell costs two batched forwards.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ivx.config import sweep as sweeps
from ivx.config.fields import COMPONENT_NAMES, is_ref
from ivx.config.loader import LoadedConfig
from ivx.core import interventions
from ivx.core.errors import ConfigError, Problem, dotted
from ivx.engine import loop
from ivx.engine.loop import CellOutput
from ivx.model import components, hooks, moe
from ivx.plan import grid, positions
from ivx.plan.grid import Cell

if TYPE_CHECKING:
    import torch

    from ivx.engine.executor import Executor
    from ivx.model.components import Site

SENDERS: tuple[str, ...] = (
    "embedding",
    "attention_output",
    "attention_value_output",
    "head_attention_value_output",
    "mlp_output",
)
# the components a path can end in: everything that reads the residual stream (not an output);
# not a mixture of experts' router or experts (their path through a frozen MoE is not modelled)
RECEIVERS: tuple[str, ...] = tuple(c for c in COMPONENT_NAMES if c not in SENDERS and c not in moe.COMPONENTS)
FROZEN: tuple[str, ...] = ("attention_value_output", "mlp_output")  # held at the run patched into
# what a sender writes: another run's value, or a mean / resample ablation's (`engine.ablation`)
SENDER_KINDS: tuple[str, ...] = ("vanilla", "VanillaIntervention", "mean", "resample")


def applies(cfg: LoadedConfig) -> bool:
    """True when the experiment is a path-patching one (an intervention lists `receivers`)."""
    return any(iv.receivers for iv in cfg.experiment.interventions)


def _values(cfg: LoadedConfig, value: Any) -> list[Any]:
    """A field's concrete values: the sweep axis it binds to, or itself."""
    if is_ref(value):
        axis = sweeps.axis_values(cfg.experiment.sweep).get(value[1:], [])
        return axis if isinstance(axis, list) else []
    return [value]


def check(cfg: LoadedConfig) -> list[Problem]:
    """Config problems of path patching (one vanilla sender, receivers, a run to copy from)."""
    if not applies(cfg):
        return []
    problems = _check_experiment(cfg)
    for i, iv in enumerate(cfg.experiment.interventions):
        if iv.receivers:
            problems += _check_sender(cfg, i, iv) + _check_receivers(cfg, i, iv.receivers)
    return problems


def _check_experiment(cfg: LoadedConfig) -> list[Problem]:
    """Problems of the experiment as a whole: one sender, exact, first token, source prompts."""
    exp = cfg.experiment
    problems: list[Problem] = []
    if len(exp.interventions) != 1:
        problems.append(
            cfg.problem(("interventions",), "path patching takes exactly one intervention (the sender)")
        )
    if exp.method != "exact":
        problems.append(cfg.problem(("method",), "path patching needs method: exact"))
    if exp.answer != "first_token":
        problems.append(cfg.problem(("answer",), "path patching scores the first answer token only"))
    copies = any(
        k in ("vanilla", "VanillaIntervention") for iv in exp.interventions for k in _values(cfg, iv.kind)
    )
    if exp.corrupt is None and copies:  # the sender comes from the source run: every record needs one
        for k, record in enumerate(cfg.records or []):
            if record.source is None:
                problems.append(
                    cfg.problem(
                        ("prompts", k),
                        "path patching without `corrupt` needs a `source` prompt in every record",
                    )
                )
                break
    return problems


def _check_sender(cfg: LoadedConfig, i: int, iv: Any) -> list[Problem]:
    """Problems of the sender: a vanilla copy of a component output from another run."""
    at = ("interventions", i)
    problems: list[Problem] = []
    for kind in _values(cfg, iv.kind):
        if kind not in SENDER_KINDS:
            problems.append(
                cfg.problem(
                    (*at, "kind"),
                    f"path patching senders are `vanilla` (a run's value), `mean` or `resample` (an "
                    f"ablation's value), got {kind!r}",
                )
            )
    for component in _values(cfg, iv.component):
        if component not in SENDERS:
            problems.append(
                cfg.problem(
                    (*at, "component"),
                    f"sender {component!r} is not a component output; senders: {', '.join(SENDERS)}",
                )
            )
    if iv.source == "base" and cfg.experiment.corrupt is None:
        problems.append(
            cfg.problem(
                (*at, "source"),
                "without `corrupt`, path patching copies the sender from `source` (the base run is "
                "the run patched into)",
            )
        )
    return problems


def _check_receivers(cfg: LoadedConfig, i: int, receivers: list[Any]) -> list[Problem]:
    """Problems of the receivers: components that read the residual stream, heads of head_* ones."""
    problems: list[Problem] = []
    for j, receiver in enumerate(receivers):
        at = ("interventions", i, "receivers", j)
        if receiver.component not in RECEIVERS:
            problems.append(
                cfg.problem(
                    (*at, "component"),
                    f"receiver {receiver.component!r} is frozen or has no input; receivers: "
                    f"{', '.join(RECEIVERS)}",
                )
            )
        if receiver.head is not None and not receiver.component.startswith("head_"):
            problems.append(cfg.problem((*at, "head"), "`head` only applies to head_* receivers"))
    return problems


def check_model(cfg: LoadedConfig, lm: Any) -> None:
    """Model-aware problems of path patching (receivers exist, frozen sites resolve): ConfigError."""

    if not applies(cfg):
        return
    problems = []
    for name in FROZEN:
        if name not in lm.info.components:
            problems.append(
                cfg.problem(
                    ("interventions", 0, "receivers"),
                    f"path patching freezes {name}, which "
                    f"{lm.info.model_type} does not expose (layout {lm.info.layout})",
                )
            )
    for i, iv in enumerate(cfg.experiment.interventions):
        for receiver, report in _receivers(cfg, i, iv):
            try:
                site = components.resolve(lm.model, lm.info, receiver.component, _layer(lm, receiver.layer))
            except components.ComponentError as exc:
                problems.append(report("layer", str(exc)))
                continue
            for head in _heads(receiver.head) or ():
                if head >= site.n_heads:
                    message = (
                        f"head {head} is out of range: {receiver.component} "
                        f"has {site.n_heads} heads (0..{site.n_heads - 1})"
                    )
                    problems.append(report("head", message))
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)))


def _receivers(cfg: LoadedConfig, i: int, iv: Any) -> Iterator[tuple[Any, Callable[[str, str], Problem]]]:
    """Every receiver to check with where its problems go: as written, then each value of a `$axis`
    bound inside `receivers` in its place (reported at that sweep value)."""
    for j, receiver in enumerate(iv.receivers or []):
        yield receiver, _at(cfg, ("interventions", i, "receivers", j), "")
    sweep = cfg.experiment.sweep
    axes = sweeps.axis_values(sweep)
    stand_ins = {a: sweeps.stand_in(v) for a, v in axes.items()}  # the other axes at their first value
    for path, axis in iv._refs:
        if path[0] != "receivers":
            continue
        for k, value in enumerate(axes.get(axis) or []):
            concrete = grid.substitute(iv, stand_ins | {axis: value})
            where = sweeps.value_path(sweep, axis, k)
            prefix = f"${axis} = {value!r} (bound to `{dotted(path)}`): "
            yield (concrete.receivers or [])[path[1]], _at(cfg, where, prefix, field=False)


def _at(cfg: LoadedConfig, where: tuple, prefix: str, field: bool = True) -> Callable[[str, str], Problem]:
    """A reporter `(field, message) -> Problem` at `where` (+ the field's key when `field`)."""

    def report(name: str, message: str) -> Problem:
        return cfg.problem((*where, name) if field else where, prefix + message)

    return report


def _layer(lm: Any, layer: int) -> int:
    """A layer index with negatives counted from the last layer."""
    return layer + lm.info.n_layers if layer < 0 else layer


def _heads(head: Any) -> tuple[int, ...] | None:
    if head is None:
        return None
    return tuple(head) if isinstance(head, list) else (int(head),)


class PromptPaths:
    """One prompt's frozen values of the run patched into and its receivers; runs chunks of cells.

    The run patched into is the executor's: the base prompt, or the corrupted one (replaced
    tokens, or the embeddings' noise as `samples` rows per cell, `PatchBuilder`'s own patches).
    """

    def __init__(self, executor: Executor, prompt: int) -> None:
        import torch

        self.executor = executor
        self.prompt = prompt
        lm = executor.lm
        p = executor.prompts[prompt]
        self.samples = executor.samples
        self.ids = torch.tensor([executor.base.run_ids(executor.work, prompt)], device=lm.device)  # [1, seq]
        frozen = [executor.site(name, layer) for layer in range(lm.info.n_layers) for name in FROZEN]
        corruption = self._corruption([Cell(-1 - prompt, prompt, (), ())])
        with hooks.patching(lm.model, corruption), hooks.capturing(lm.model, frozen) as store:
            lm.model(input_ids=self.ids.expand(self.samples, -1))
        self.frozen = {site: store[site] for site in frozen}  # [samples, seq, dim] of the run patched into
        self.length, self.subject = p.length, p.subject_span
        self.sender = executor.exp.interventions[0]
        self.swept = any(path[0] == "receivers" for path, _ in self.sender._refs)

    def receivers(self, cell: Cell) -> tuple[tuple[Site, tuple[int, ...], tuple[int, ...] | None], ...]:
        """The cell's receivers as (site, base positions, heads); a `$axis` in them takes the cell's value."""
        sender = grid.substitute(self.sender, cell.axes()) if self.swept else self.sender
        lm = self.executor.lm
        return tuple(
            (
                self.executor.site(r.component, _layer(lm, r.layer)),
                positions.resolve(r.position, self.length, self.subject),
                _heads(r.head),
            )
            for r in sender.receivers or []
        )

    def _corruption(self, chunk: list[Cell]) -> list[hooks.Patch]:
        """The corruption's patches of a chunk (noise on the embeddings; none otherwise)."""
        bare = [dataclasses.replace(cell, edits=()) for cell in chunk]
        return self.executor.engine.patches.build(bare).patches

    def _freeze(self, cells: int) -> list[hooks.Patch]:
        """Every attention head and MLP output of every layer held at its value in the run patched into."""
        import torch

        device = self.ids.device
        rows, seq = cells * self.samples, self.ids.shape[1]
        at_rows = torch.arange(rows, device=device).repeat_interleave(seq)
        at_pos = torch.arange(seq, device=device).repeat(rows)
        return [
            hooks.Patch(
                site, at_rows, at_pos, interventions.vanilla, values.repeat(cells, 1, 1).flatten(0, 1)
            )
            for site, values in self.frozen.items()
        ]

    def run(self, chunk: list[Cell]) -> torch.Tensor:
        """Last-position logits `[cells * samples, vocab]` of the two-step path patch of each cell."""
        import torch

        model = self.executor.lm.model
        rows = len(chunk) * self.samples
        ids = self.ids.expand(rows, -1)
        groups: dict[tuple, list[int]] = defaultdict(list)  # receivers → the chunk's rows that take them
        for k, cell in enumerate(chunk):
            groups[self.receivers(cell)] += range(k * self.samples, (k + 1) * self.samples)
        sites = list(dict.fromkeys(site for receivers in groups for site, _, _ in receivers))
        # the freeze first, then the corruption and the senders (`PatchBuilder`, as exact patching)
        senders = self.executor.engine.patches.build(chunk).patches
        with hooks.patching(model, self._freeze(len(chunk)) + senders):
            with hooks.capturing(model, sites) as store:
                model(input_ids=ids)
        device = self.ids.device
        patches = self._corruption(chunk)
        for receivers, at in groups.items():
            at_rows = torch.tensor(at, device=device)
            for site, where, heads in receivers:
                recorded = store[site][at_rows][:, list(where)]  # [len(at), n, dim]
                patches.append(
                    hooks.Patch(
                        site,
                        at_rows.repeat_interleave(len(where)),
                        torch.tensor(where, device=device).repeat(len(at)),
                        interventions.vanilla,
                        recorded.reshape(len(at) * len(where), -1),
                        heads=heads,
                    )
                )
        with hooks.patching(model, patches):
            return model(input_ids=ids).logits[:, -1].float()  # [rows, vocab]


def execute(executor: Executor, cells: list[Cell]) -> Iterator[list[CellOutput]]:
    """Path-patch cells prompt by prompt (after `executor.prepare()`); rows from the one row builder.

    Chunks are cut from each prompt's cells in the plan and then keep the cells asked for, so a
    resumed run or a backend task runs every cell in the forward it had in a whole local run.
    """
    wanted = {cell.index for cell in cells}
    planned: dict[int, list[Cell]] = defaultdict(list)
    for cell in executor.plan.cells:
        planned[cell.prompt].append(cell)
    for prompt in dict.fromkeys(cell.prompt for cell in cells):
        paths = PromptPaths(executor, prompt)
        step = max(1, executor.batch_rows(executor.prompts[prompt].length) // executor.samples)
        mine = planned[prompt]
        for start in range(0, len(mine), step):
            chunk = [cell for cell in mine[start : start + step] if cell.index in wanted]
            if chunk:
                yield loop.outputs(executor.engine, chunk, paths.run(chunk).cpu())
