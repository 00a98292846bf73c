"""Module-path components checked on the model's structure before any forward pass.

A path that does not exist (with the nearest module names), one outside the decoder blocks or a
`{layer}` out of range is a config problem at the intervention's `component` line; `ivx validate`
finds it on the meta model or its recorded skeleton (no weights, no forward).
"""

from __future__ import annotations

from typing import Any

from ivx.config import module_names
from ivx.config import sweep as sweeps
from ivx.config.loader import LoadedConfig
from ivx.core.errors import Problem
from ivx.model import components, module_paths


def _layers(layer: Any, n_layers: int) -> list[int]:
    if layer == "all":
        return list(range(n_layers))
    items = layer if isinstance(layer, list) else [layer]
    return [i % n_layers if isinstance(i, int) and i < 0 else i for i in items if isinstance(i, int)]


def problems(cfg: LoadedConfig, lm: Any) -> list[Problem]:
    """Every module-path component that cannot be resolved on this model (no probe forward)."""
    found: list[Problem] = []
    blocks = components.layout(lm.model)[2]
    n_layers = lm.info.n_layers
    axes = sweeps.axis_values(cfg.experiment.sweep)
    for i, iv in enumerate(cfg.experiment.interventions):
        if sweeps.is_ref(iv.component):  # a swept component: check each path value where it is written
            axis = str(iv.component)[1:]
            found_values = axes.get(axis)
            values: list[Any] = found_values if isinstance(found_values, list) else []
            named = [(sweeps.value_path(cfg.experiment.sweep, axis, j), v) for j, v in enumerate(values)]
        else:
            named = [(("interventions", i, "component"), iv.component)]
        layers = _layers(iv.layer, n_layers) or [0]
        for where, component in named:
            problem = _first(lm.model, blocks, n_layers, component, layers)
            if problem:
                found.append(cfg.problem(where, problem))
    return found


def _first(model: Any, blocks: str, n_layers: int, component: Any, layers: list[int]) -> str | None:
    """The first layer's problem with a module-path component (None for named components)."""
    if not module_names.is_path(component):
        return None
    for layer in layers:
        problem = module_paths.problem(model, blocks, n_layers, component, layer)
        if problem:
            return problem
    return None
