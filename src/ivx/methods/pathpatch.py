"""Path patching: the effect of sender components on receiver components only.

Activation patching asks how much restoring one site moves the output through *every* path
downstream of it. Path patching (Wang et al. 2022, "Interpretability in the wild"; Goldowsky-Dill
et al. 2023, "Localizing model behavior with path patching") asks how much of that effect travels
from a sender to chosen receivers directly, through the residual stream and nothing else:

1. the source run gives the sender's activation (captured once per prompt by the executor);
2. the base run with the sender patched from the source and every other attention head and MLP
   output *frozen* at its base-run value records the receivers' inputs (queries, keys, values,
   MLP inputs, the final residual stream, ...): only the direct sender → receiver path differs;
3. the base run with only those receiver inputs patched in gives the logits and the metric.

In YAML, the sender is an ordinary `vanilla` intervention (sweepable: `layer: all, head: all`) with
`receivers: [{component, layer, head?, position?}]`. Each cell costs two batched forwards.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ivx.config.fields import COMPONENT_NAMES, is_ref
from ivx.config.loader import LoadedConfig
from ivx.core import interventions, metrics
from ivx.core.errors import ConfigError, Problem
from ivx.engine.loop import CellOutput
from ivx.model import components, hooks
from ivx.plan import positions

if TYPE_CHECKING:
    import torch

    from ivx.engine.executor import Executor
    from ivx.model.components import Site
    from ivx.plan.grid import Cell

SENDERS: tuple[str, ...] = (
    "embedding",
    "attention_output",
    "attention_value_output",
    "head_attention_value_output",
    "mlp_output",
)
# the components a path can end in: everything that reads the residual stream (not an output)
RECEIVERS: tuple[str, ...] = tuple(c for c in COMPONENT_NAMES if c not in SENDERS)
FROZEN: tuple[str, ...] = ("attention_value_output", "mlp_output")  # held at the base run's values


def applies(cfg: LoadedConfig) -> bool:
    """True when the experiment is a path-patching one (an intervention lists `receivers`)."""
    return any(iv.receivers for iv in cfg.experiment.interventions)


def _values(cfg: LoadedConfig, value: Any) -> list[Any]:
    """A field's concrete values: the sweep axis it binds to, or itself."""
    if is_ref(value):
        axis = cfg.experiment.sweep.get(value[1:], [])
        return axis if isinstance(axis, list) else []
    return [value]


def check(cfg: LoadedConfig) -> list[Problem]:
    """Config problems of path patching (one vanilla sender, receivers, source prompts)."""
    exp = cfg.experiment
    if not applies(cfg):
        return []
    problems: list[Problem] = []
    if len(exp.interventions) != 1:
        problems.append(
            cfg.problem(("interventions",), "path patching takes exactly one intervention (the sender)")
        )
    if exp.corrupt is not None:
        problems.append(
            cfg.problem(
                ("corrupt",), "path patching copies the sender from the records' source run; remove `corrupt`"
            )
        )
    if exp.method != "exact":
        problems.append(cfg.problem(("method",), "path patching needs method: exact"))
    if exp.answer != "first_token":
        problems.append(cfg.problem(("answer",), "path patching scores the first answer token only"))
    if exp.backend != "local":
        problems.append(cfg.problem(("backend",), "path patching runs on the local backend only"))
    for i, iv in enumerate(exp.interventions):
        at = ("interventions", i)
        if not iv.receivers:
            continue
        for kind in _values(cfg, iv.kind):
            if kind not in ("vanilla", "VanillaIntervention"):
                problems.append(
                    cfg.problem((*at, "kind"), f"path patching senders are `vanilla`, got {kind!r}")
                )
        for component in _values(cfg, iv.component):
            if component not in SENDERS:
                problems.append(
                    cfg.problem(
                        (*at, "component"),
                        f"sender {component!r} is not a component output; senders: {', '.join(SENDERS)}",
                    )
                )
        if iv.source == "base":
            problems.append(cfg.problem((*at, "source"), "path patching copies the sender from `source`"))
        for j, receiver in enumerate(iv.receivers):
            if receiver.component not in RECEIVERS:
                problems.append(
                    cfg.problem(
                        (*at, "receivers", j, "component"),
                        f"receiver {receiver.component!r} is frozen or has no input; receivers: "
                        f"{', '.join(RECEIVERS)}",
                    )
                )
            if receiver.head is not None and not receiver.component.startswith("head_"):
                problems.append(
                    cfg.problem((*at, "receivers", j, "head"), "`head` only applies to head_* receivers")
                )
    for k, record in enumerate(cfg.records or []):
        if record.source is None:
            problems.append(
                cfg.problem(("prompts", k), "path patching needs a `source` prompt in every record")
            )
            break
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
        for j, receiver in enumerate(iv.receivers or []):
            at = ("interventions", i, "receivers", j)
            try:
                site = components.resolve(lm.model, lm.info, receiver.component, _layer(lm, receiver.layer))
            except components.ComponentError as exc:
                problems.append(cfg.problem((*at, "layer"), str(exc)))
                continue
            for head in _heads(receiver.head) or ():
                if head >= site.n_heads:
                    problems.append(
                        cfg.problem(
                            (*at, "head"),
                            f"head {head} is out of range: {receiver.component} "
                            f"has {site.n_heads} heads (0..{site.n_heads - 1})",
                        )
                    )
    if problems:
        raise ConfigError(problems)


def _layer(lm: Any, layer: int) -> int:
    """A layer index with negatives counted from the last layer."""
    return layer + lm.info.n_layers if layer < 0 else layer


def _heads(head: Any) -> tuple[int, ...] | None:
    if head is None:
        return None
    return tuple(head) if isinstance(head, list) else (int(head),)


class PromptPaths:
    """One prompt's frozen base-run values and resolved receivers; runs chunks of sender cells."""

    def __init__(self, executor: Executor, prompt: int) -> None:
        import torch

        self.executor = executor
        self.prompt = prompt
        lm = executor.lm
        p = executor.prompts[prompt]
        self.ids = torch.tensor([p.base_ids], device=lm.device)  # [1, seq]
        frozen = [executor.site(name, layer) for layer in range(lm.info.n_layers) for name in FROZEN]
        with hooks.capturing(lm.model, frozen) as store:
            lm.model(input_ids=self.ids)
        self.frozen = {site: store[site][0] for site in frozen}  # [seq, dim] of the base run
        self.receivers: list[tuple[Site, tuple[int, ...], tuple[int, ...] | None]] = []
        for receiver in executor.exp.interventions[0].receivers or []:
            site = executor.site(receiver.component, _layer(lm, receiver.layer))
            where = positions.resolve(receiver.position, p.length, p.subject_span)
            self.receivers.append((site, where, _heads(receiver.head)))

    def _freeze(self, rows: int) -> list[hooks.Patch]:
        """Every attention head and MLP output of every layer held at the base run's value."""
        import torch

        device = self.ids.device
        seq = self.ids.shape[1]
        at_rows = torch.arange(rows, device=device).repeat_interleave(seq)
        at_pos = torch.arange(seq, device=device).repeat(rows)
        return [
            hooks.Patch(site, at_rows, at_pos, interventions.vanilla, values.repeat(rows, 1))
            for site, values in self.frozen.items()
        ]

    def _senders(self, chunk: list[Cell]) -> list[hooks.Patch]:
        """Each row's sender, copied from the source run (after the freeze in the same hook)."""
        import torch

        device = self.ids.device
        out = []
        for row, cell in enumerate(chunk):
            for edit in cell.edits:
                site = self.executor.site(edit.component, edit.layer)
                source = self.executor.base.source_acts[(edit.component, edit.layer)][self.prompt]
                out.append(
                    hooks.Patch(
                        site,
                        torch.full((len(edit.positions),), row, device=device),
                        torch.tensor(edit.positions, device=device),
                        interventions.vanilla,
                        source[list(edit.source_positions)].to(device),
                        heads=edit.heads,
                        subspace=edit.subspace,
                    )
                )
        return out

    def run(self, chunk: list[Cell]) -> torch.Tensor:
        """Last-position logits `[rows, vocab]` of the two-step path patch of each cell."""
        import torch

        model = self.executor.lm.model
        rows = len(chunk)
        ids = self.ids.expand(rows, -1)
        sites = list(dict.fromkeys(site for site, _, _ in self.receivers))
        with hooks.patching(model, self._freeze(rows) + self._senders(chunk)):
            with hooks.capturing(model, sites) as store:
                model(input_ids=ids)
        device = self.ids.device
        patches = []
        for site, where, heads in self.receivers:
            recorded = store[site][:, list(where)]  # [rows, n, dim]
            patches.append(
                hooks.Patch(
                    site,
                    torch.arange(rows, device=device).repeat_interleave(len(where)),
                    torch.tensor(where, device=device).repeat(rows),
                    interventions.vanilla,
                    recorded.reshape(rows * len(where), -1),
                    heads=heads,
                )
            )
        with hooks.patching(model, patches):
            return model(input_ids=ids).logits[:, -1].float()  # [rows, vocab]


def execute(executor: Executor, cells: list[Cell]) -> Iterator[list[CellOutput]]:
    """Path-patch cells prompt by prompt (after `executor.prepare()`); rows like the exact path's."""

    by_prompt: dict[int, list[Cell]] = defaultdict(list)
    for cell in cells:
        by_prompt[cell.prompt].append(cell)
    for prompt, mine in by_prompt.items():
        paths = PromptPaths(executor, prompt)
        step = max(1, executor.batch_rows(executor.prompts[prompt].length))
        for start in range(0, len(mine), step):
            chunk = mine[start : start + step]
            logits = paths.run(chunk).cpu()
            yield [
                CellOutput(cell, _row(executor, cell, logits[i : i + 1]), logits[i], {})
                for i, cell in enumerate(chunk)
            ]


def _row(executor: Executor, cell: Cell, logits: torch.Tensor) -> dict[str, Any]:
    """A results row with the exact path's keys: metrics against the base and source runs."""
    import torch

    p = executor.prompts[cell.prompt]
    target = torch.tensor([-1 if p.target_id is None else p.target_id])
    foil = torch.tensor([-1 if p.foil_id is None else p.foil_id])
    ref = executor.base.reference_logits(cell.prompt).unsqueeze(0) if "kl" in executor.exp.metrics else None
    values = metrics.row_values(logits, target, foil, ref, rank="target_rank" in executor.exp.metrics)
    patched = {k: float(v[0]) for k, v in values.items()}
    corrupted, clean = executor.reference_values(cell.prompt)
    names = [m for m in executor.exp.metrics if m != "top_k"]
    row: dict[str, Any] = {"cell": cell.index, "prompt_index": cell.prompt, **dict(cell.point)}
    row.update(metrics.cell_values(names, patched, corrupted, clean))
    if p.target_id is not None:
        row["p_clean"] = clean["target_prob"]
        row["p_corrupted"] = corrupted["target_prob"]
    if "top_k" in executor.exp.metrics:
        probs = torch.softmax(logits[0], dim=-1)
        row["top_k"] = metrics.top_k(probs, executor.exp.output.top_k, executor.lm.tokenizer)
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
