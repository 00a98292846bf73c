"""Expand the sweep grid × prompts into a flat list of frozen Cells (pure data, no torch).

Model-aware checks happen here, before any forward pass: layers, heads and positions are
checked against the model's description and each prompt's token length, and every problem is
reported in the same `file:line  dotted.path  message` form as schema errors.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ivx.config import sweep as sweeps
from ivx.config.fields import is_ref
from ivx.config.loader import LoadedConfig, at_sweep_value
from ivx.config.schema import Intervention
from ivx.core.errors import ConfigError, Problem
from ivx.plan import sae as sae_plan
from ivx.plan.edits import HEAD_COUNT_OF, SOURCE_KINDS, Edit, Mode, head_count, resolve_edits
from ivx.plan.positions import resolve
from ivx.plan.tokenization import PositionError, TokenizedPrompt

if TYPE_CHECKING:
    from ivx.model.components import ModelInfo

__all__ = ["HEAD_COUNT_OF", "SOURCE_KINDS", "Cell", "Edit", "Mode", "Plan", "count", "expand", "substitute"]
BINDABLE: tuple[str, ...] = ("component", "layer", "position", "head", "source_position", "kind")


@dataclass(frozen=True)
class Cell:
    """One grid point for one prompt; noise samples are rows inside it."""

    index: int
    prompt: int
    point: tuple[tuple[str, Any], ...]
    edits: tuple[Edit, ...]

    def axes(self) -> dict[str, Any]:
        """The sweep-axis values of this cell."""
        return dict(self.point)


@dataclass(frozen=True)
class Plan:
    """All cells of an experiment plus the corruption positions of each prompt."""

    cells: tuple[Cell, ...]
    axes: tuple[str, ...]
    corrupt_positions: tuple[tuple[int, ...], ...]  # per prompt ([] when no corruption)

    def to_rows(self) -> list[dict[str, Any]]:
        """JSON-ready description of every cell (for plan.jsonl)."""
        return [
            {
                "cell": c.index,
                "prompt_index": c.prompt,
                **{k: v for k, v in c.point},
                "edits": [
                    {
                        "name": e.name,
                        "kind": e.kind,
                        "component": e.component,
                        "layer": e.layer,
                        "positions": list(e.positions),
                        "source": e.source,
                        "source_positions": list(e.source_positions),
                        "heads": list(e.heads) if e.heads is not None else None,
                    }
                    for e in c.edits
                ],
            }
            for c in self.cells
        ]


def _axis_fields(cfg: LoadedConfig) -> dict[str, set[str]]:
    """Which intervention fields each sweep axis is bound to (by name: `receivers[0].layer` → layer)."""
    out: dict[str, set[str]] = {axis: set() for axis in sweeps.axis_values(cfg.experiment.sweep)}
    for iv in cfg.experiment.interventions:
        for field_name in BINDABLE:
            value = getattr(iv, field_name)
            if is_ref(value) and value[1:] in out:
                out[value[1:]].add(field_name)
        for path, axis in iv._refs:
            if axis in out:
                out[axis].add(str(path[-1]))
    return out


def _axis_values(
    cfg: LoadedConfig, info: ModelInfo, prompt: TokenizedPrompt, problems: list[Problem]
) -> dict[str, list[Any]]:
    """The values of each `all` product axis for one prompt (from the model and the prompt's length)."""
    bound = _axis_fields(cfg)
    values: dict[str, list[Any]] = {}
    for axis, spec in cfg.experiment.sweep.items():
        if spec != "all":
            continue
        fields = bound.get(axis, set())
        if fields == {"layer"}:
            values[axis] = list(range(info.n_layers))
        elif fields <= {"position", "source_position"} and fields:
            values[axis] = list(range(prompt.length))
        elif fields == {"head"}:
            values[axis] = list(range(info.n_heads))  # the most any component has; see _heads_fit
        elif fields == {"feature"}:
            values[axis] = sae_plan.all_features(cfg, axis, problems)  # every feature of the SAE
        else:
            problems.append(
                cfg.problem(
                    ("sweep", axis),
                    f"'all' works for axes bound to layer, position, head or feature; ${axis} is bound to "
                    f"{sorted(fields) or 'nothing'} — list the values instead",
                )
            )
            values[axis] = []
    return values


def _all_head_axes(cfg: LoadedConfig) -> list[str]:
    bound = _axis_fields(cfg)
    return [a for a, spec in cfg.experiment.sweep.items() if spec == "all" and bound.get(a) == {"head"}]


def _heads_fit(cfg: LoadedConfig, info: ModelInfo, point: dict[str, Any], axes: list[str]) -> bool:
    """`sweep: head: all` is per component: GQA key/value components have fewer heads."""
    for iv in cfg.experiment.interventions:
        if not (is_ref(iv.head) and iv.head[1:] in axes):
            continue
        component = point.get(iv.component[1:]) if is_ref(iv.component) else iv.component
        n_heads = head_count(info, str(component))
        if n_heads is not None and point[iv.head[1:]] >= n_heads:
            return False
    return True


def _points(
    cfg: LoadedConfig, info: ModelInfo, prompt: TokenizedPrompt, problems: list[Problem]
) -> Iterator[dict[str, Any]]:
    """Every grid point of one prompt, in the sweep's axis order."""
    values = _axis_values(cfg, info, prompt, problems)
    per_component = _all_head_axes(cfg)
    for point in sweeps.grid(sweeps.dimensions(cfg.experiment.sweep), values):
        if not per_component or _heads_fit(cfg, info, point, per_component):
            yield point


def substitute(iv: Intervention, point: dict[str, Any]) -> Intervention:
    """The intervention with every `$axis` (a site field, or any field at any depth) set from `point`."""
    data = iv.model_dump()
    for key, value in data.items():
        if is_ref(value):
            data[key] = point[value[1:]]
    for path, axis in iv._refs:  # in place: `data` is this call's own dump (a deep copy per cell is slow)
        node = data
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = point[axis]
    return Intervention.model_validate(data)


def count(cfg: LoadedConfig, info: ModelInfo, prompts: list[TokenizedPrompt]) -> int:
    """Cells `expand` would make (per corruption variant), without building any of them."""
    if _all_head_axes(cfg):
        return sum(sum(1 for _ in _points(cfg, info, p, [])) for p in prompts)
    dims = sweeps.dimensions(cfg.experiment.sweep)
    return sum(sweeps.size(dims, _axis_values(cfg, info, p, [])) for p in prompts)


def _mode_problems(cfg: LoadedConfig, mode: Mode) -> list[Problem]:
    """Sections a command cannot honour: reported, never silently ignored."""
    exp = cfg.experiment
    problems = []
    if mode != "run" and exp.corrupt is not None:
        problems.append(cfg.problem(("corrupt",), f"ivx {mode} does not corrupt prompts; remove `corrupt`"))
    if mode == "train" and len(exp.interventions) != 1:
        problems.append(
            cfg.problem(("interventions",), "ivx train needs exactly one (trainable) intervention")
        )
    return problems


def _prompt_problems(cfg: LoadedConfig, prompt: TokenizedPrompt, mode: Mode) -> list[Problem]:
    """What the command needs from each prompt record (answers to score, a counterfactual)."""
    exp = cfg.experiment
    if mode == "generate":
        return []
    if mode == "train":
        if prompt.source_ids is None or prompt.target_id is None:
            return [
                cfg.problem(
                    ("prompts",),
                    f"record {prompt.index} needs `source` and `target` (the counterfactual answer)",
                )
            ]
        return []
    problems = []
    if exp.trace is not None or "indirect_effect" in exp.metrics or "target_prob" in exp.metrics:
        if prompt.target_id is None:
            problems.append(
                cfg.problem(("prompts",), f"prompt {prompt.index} needs a `target` for the metrics")
            )
    if any(m in exp.metrics for m in ("logit_diff", "logit_diff_norm")) and prompt.foil_id is None:
        problems.append(cfg.problem(("metrics",), f"logit_diff needs a `foil` in prompt {prompt.index}"))
    return problems


def _corrupt_positions(
    cfg: LoadedConfig, prompt: TokenizedPrompt, problems: list[Problem]
) -> tuple[int, ...]:
    corrupt = cfg.experiment.corrupt
    if corrupt is None or isinstance(corrupt, list):
        return ()
    try:
        return resolve(corrupt.positions, prompt.length, prompt.subject_span)
    except PositionError as exc:
        problems.append(cfg.problem(("corrupt", "positions"), f"prompt {prompt.index}: {exc}"))
        return ()


def _cell_edits(
    cfg: LoadedConfig,
    info: ModelInfo,
    prompt: TokenizedPrompt,
    point: dict[str, Any],
    mode: Mode,
    problems: list[Problem],
    memo: dict[tuple[int, str], Intervention | ValueError],
) -> list[Edit]:
    edits: list[Edit] = []
    for i, iv in enumerate(cfg.experiment.interventions):
        try:
            concrete = _substituted(iv, i, point, memo)
        except ValueError as exc:
            problems.append(cfg.problem(("sweep",), f"sweep values give an invalid intervention: {exc}"))
            continue
        before = len(problems)
        edits.extend(resolve_edits(cfg, info, prompt, i, concrete, problems, mode))
        problems[before:] = [at_sweep_value(cfg, i, point, p) for p in problems[before:]]
    if mode == "train" and len(edits) > 1:
        problems.append(
            cfg.problem(
                ("interventions", 0, "layer"),
                f"ivx train trains one site, but this point has {len(edits)} (a layer list or window)",
            )
        )
    return edits


def _substituted(
    iv: Intervention, i: int, point: dict[str, Any], memo: dict[tuple[int, str], Intervention | ValueError]
) -> Intervention:
    """`substitute`, once per intervention and grid point of a plan (every prompt repeats them)."""
    key = (i, repr(tuple(point.items())))
    if key not in memo:
        try:
            memo[key] = substitute(iv, point)
        except ValueError as exc:
            memo[key] = exc
    found = memo[key]
    if isinstance(found, ValueError):
        raise found
    return found


def expand(cfg: LoadedConfig, info: ModelInfo, prompts: list[TokenizedPrompt], mode: Mode = "run") -> Plan:
    """Cells for every prompt × grid point; raise ConfigError with every model-aware problem."""
    problems = _mode_problems(cfg, mode)
    memo: dict[tuple[int, str], Intervention | ValueError] = {}
    cells: list[Cell] = []
    corrupt: list[tuple[int, ...]] = []
    for prompt in prompts:
        corrupt.append(_corrupt_positions(cfg, prompt, problems) if mode == "run" else ())
        missing = _prompt_problems(cfg, prompt, mode)
        problems += missing
        if missing and mode == "train":
            continue  # without a counterfactual there is nothing to resolve
        for point in _points(cfg, info, prompt, problems):
            edits = _cell_edits(cfg, info, prompt, point, mode, problems, memo)
            cells.append(Cell(len(cells), prompt.index, tuple(point.items()), tuple(edits)))
    if problems:
        unique = list(dict.fromkeys(problems))
        raise ConfigError(unique)  # collapsed per distinct problem, with a count of prompts
    return Plan(tuple(cells), tuple(d.name for d in sweeps.dimensions(cfg.experiment.sweep)), tuple(corrupt))
