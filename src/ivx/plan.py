"""Expand the sweep grid × prompts into a flat list of frozen Cells (pure data, no torch).

Model-aware checks happen here, before any forward pass: layers, heads and positions are
checked against the model's description and each prompt's token length, and every problem is
reported in the same `file:line  dotted.path  message` form as schema errors.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Literal

from ivx import interventions, metrics
from ivx.config import ConfigError, LoadedConfig, Problem, at_sweep_value
from ivx.positions import PositionError, TokenizedPrompt, resolve
from ivx.schema import Intervention, is_ref

HEAD_COUNT_OF: dict[str, str] = {
    "head_attention_value_output": "n_heads",
    "head_query_output": "n_heads",
    "head_key_output": "n_kv_heads",
    "head_value_output": "n_kv_heads",
}
SOURCE_KINDS = frozenset(kind for kind, spec in interventions.KINDS.items() if spec.needs_source)


@dataclass(frozen=True)
class Edit:
    """One concrete intervention at one (component, layer) for one cell."""

    index: int  # position of the intervention in the config's list
    name: str
    kind: str
    component: str
    layer: int
    positions: tuple[int, ...]
    source: Literal["base", "source", "corrupted", "none"]
    source_positions: tuple[int, ...]
    heads: tuple[int, ...] | None
    subspace: tuple[int, ...] | None
    value: float | None
    coefficient: float
    vector: str | None
    bundle: str | None = None


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
    """Which intervention fields each sweep axis is bound to."""
    out: dict[str, set[str]] = {axis: set() for axis in cfg.experiment.sweep}
    for iv in cfg.experiment.interventions:
        for field_name in ("component", "layer", "position", "head", "source_position", "kind"):
            value = getattr(iv, field_name)
            if is_ref(value) and value[1:] in out:
                out[value[1:]].add(field_name)
    return out


def _axis_values(
    cfg: LoadedConfig, info: Any, prompt: TokenizedPrompt, problems: list[Problem]
) -> dict[str, list[Any]]:
    bound = _axis_fields(cfg)
    values: dict[str, list[Any]] = {}
    for axis, spec in cfg.experiment.sweep.items():
        if spec != "all":
            values[axis] = list(spec)
            continue
        fields = bound.get(axis, set())
        if fields == {"layer"}:
            values[axis] = list(range(info.n_layers))
        elif fields <= {"position", "source_position"} and fields:
            values[axis] = list(range(prompt.length))
        elif fields == {"head"}:
            values[axis] = list(range(info.n_heads))
        else:
            problems.append(
                cfg.problem(
                    ("sweep", axis),
                    f"'all' works for axes bound to layer, position or head; ${axis} is bound to "
                    f"{sorted(fields) or 'nothing'} — list the values instead",
                )
            )
            values[axis] = []
    return values


def _substitute(iv: Intervention, point: dict[str, Any]) -> Intervention:
    data = iv.model_dump()
    for key, value in data.items():
        if is_ref(value):
            data[key] = point[value[1:]]
    return Intervention.model_validate(data)


def _window(layer: int, window: int | None, n_layers: int) -> list[int]:
    if not window:
        return [layer]
    # ROME's convention: layers [l - w//2, l + ceil(w/2)) clipped to the model.
    return list(range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2))))


def _edits(
    cfg: LoadedConfig,
    info: Any,
    prompt: TokenizedPrompt,
    index: int,
    iv: Intervention,
    problems: list[Problem],
) -> list[Edit]:
    path = ("interventions", index)
    name = iv.name or f"iv{index}"
    component = iv.component
    if component not in info.components:
        problems.append(
            cfg.problem(
                path + ("component",),
                f"component {component!r} does not exist in this model ({info.model_type}, layout "
                f"{info.layout}); available: {', '.join(info.components)}",
            )
        )
        return []
    layers_spec = list(range(info.n_layers)) if iv.layer == "all" else iv.layer
    layers_spec = layers_spec if isinstance(layers_spec, list) else [layers_spec]
    layers: list[int] = []
    for layer in layers_spec:
        concrete = layer + info.n_layers if layer < 0 else layer
        if component == "embedding":
            concrete = 0
        elif not 0 <= concrete < info.n_layers:
            problems.append(
                cfg.problem(
                    path + ("layer",),
                    f"layer {layer} is out of range: the model has {info.n_layers} layers "
                    f"(0..{info.n_layers - 1})",
                )
            )
            continue
        size = iv.window.get(component) if isinstance(iv.window, dict) else iv.window
        trace = cfg.experiment.trace
        if iv.window is None and trace is not None and iv.kind == "vanilla":
            size = trace.window.get(component)  # the ROME protocol's default window
        for lay in _window(concrete, size, info.n_layers):
            if lay not in layers:
                layers.append(lay)
    try:
        positions = resolve(iv.position, prompt.length, prompt.subject_span)
    except PositionError as exc:
        problems.append(cfg.problem(path + ("position",), f"prompt {prompt.index}: {exc}"))
        positions = ()  # keep checking (source, heads) so every problem is reported at once
    source: Literal["base", "source", "none"] = "none"
    source_positions: tuple[int, ...] = ()
    if iv.kind in SOURCE_KINDS and iv.vector is None:
        source = iv.source if iv.source != "auto" else ("source" if prompt.source_ids else "base")
        if source == "source" and prompt.source_ids is None:
            problems.append(cfg.problem(path + ("source",), f"prompt {prompt.index} has no `source` prompt"))
            return []
        src_len = len(prompt.source_ids) if source == "source" else prompt.length
        src_subject = prompt.source_subject_span if source == "source" else prompt.subject_span
        if iv.source_position is not None:
            try:
                source_positions = resolve(iv.source_position, src_len, src_subject)
            except PositionError as exc:
                problems.append(
                    cfg.problem(path + ("source_position",), f"prompt {prompt.index} source: {exc}")
                )
                return []
        elif src_len != prompt.length:
            problems.append(
                cfg.problem(
                    path + ("source_position",),
                    f"prompt {prompt.index}: base has {prompt.length} tokens but the source has "
                    f"{src_len}; set `source_position` to map positions explicitly",
                )
            )
            return []
        else:
            source_positions = positions
        if len(source_positions) not in (1, len(positions)):
            problems.append(
                cfg.problem(
                    path + ("source_position",),
                    f"{len(source_positions)} source positions for {len(positions)} base positions "
                    "(give one, or as many as `position`)",
                )
            )
            return []
        if len(source_positions) == 1 and len(positions) > 1:
            source_positions = source_positions * len(positions)
    heads: tuple[int, ...] | None = None
    if component in HEAD_COUNT_OF:
        n_heads = getattr(info, HEAD_COUNT_OF[component])
        head_spec = iv.head if iv.head not in (None, "all") else list(range(n_heads))
        heads = tuple(head_spec if isinstance(head_spec, list) else [head_spec])
        bad = [h for h in heads if h >= n_heads]
        if bad:
            problems.append(
                cfg.problem(
                    path + ("head",),
                    f"head {bad[0]} is out of range: {component} has {n_heads} heads (0..{n_heads - 1})",
                )
            )
            return []
    severed: list[Edit] = []
    if iv.sever is not None and layers:
        every = tuple(range(prompt.length))
        for later in range(max(layers) + 1, info.n_layers):
            severed.append(
                Edit(
                    index,
                    f"{name}.sever",
                    "vanilla",
                    iv.sever,
                    later,
                    every,
                    "corrupted",
                    every,
                    None,
                    None,
                    None,
                    1.0,
                    None,
                )
            )
    return severed + [
        Edit(
            index=index,
            name=name,
            kind=iv.kind,
            component=component,
            layer=layer,
            positions=positions,
            source=source,
            source_positions=source_positions,
            heads=heads,
            subspace=tuple(iv.subspace) if iv.subspace else None,
            value=iv.value,
            coefficient=iv.coefficient,
            vector=iv.vector,
            bundle=iv.bundle,
        )
        for layer in layers
    ]


def count(cfg: LoadedConfig, info: Any, prompts: list[TokenizedPrompt]) -> int:
    """Cells `expand` would make (per corruption variant), without building any of them."""
    total = 0
    for prompt in prompts:
        n = 1
        for values in _axis_values(cfg, info, prompt, []).values():
            n *= len(values)
        total += n
    return total


def expand(cfg: LoadedConfig, info: Any, prompts: list[TokenizedPrompt]) -> Plan:
    """Cells for every prompt × grid point; raise ConfigError with every model-aware problem."""
    exp = cfg.experiment
    problems: list[Problem] = []
    cells: list[Cell] = []
    corrupt: list[tuple[int, ...]] = []
    for prompt in prompts:
        if exp.corrupt is not None:
            try:
                corrupt.append(resolve(exp.corrupt.positions, prompt.length, prompt.subject_span))
            except PositionError as exc:
                problems.append(cfg.problem(("corrupt", "positions"), f"prompt {prompt.index}: {exc}"))
                corrupt.append(())
        else:
            corrupt.append(())
        if exp.trace is not None or metrics.needing("target", exp.metrics):
            if prompt.target_id is None:
                problems.append(
                    cfg.problem(("prompts",), f"prompt {prompt.index} needs a `target` for the metrics")
                )
        if metrics.needing("foil", exp.metrics) and prompt.foil_id is None:
            problems.append(cfg.problem(("metrics",), f"logit_diff needs a `foil` in prompt {prompt.index}"))
        values = _axis_values(cfg, info, prompt, problems)
        names = list(values)
        for combo in itertools.product(*(values[n] for n in names)):
            point = dict(zip(names, combo, strict=True))
            edits: list[Edit] = []
            for i, iv in enumerate(exp.interventions):
                try:
                    concrete = _substitute(iv, point)
                except ValueError as exc:
                    problems.append(
                        cfg.problem(("sweep",), f"sweep values give an invalid intervention: {exc}")
                    )
                    continue
                before = len(problems)
                edits.extend(_edits(cfg, info, prompt, i, concrete, problems))
                problems[before:] = [at_sweep_value(cfg, i, point, p) for p in problems[before:]]
            cells.append(Cell(len(cells), prompt.index, tuple(point.items()), tuple(edits)))
    if problems:
        unique = list(dict.fromkeys(problems))
        raise ConfigError(unique)  # collapsed per distinct problem, with a count of prompts
    return Plan(tuple(cells), tuple(exp.sweep), tuple(corrupt))
