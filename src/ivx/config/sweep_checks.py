"""Problems of `$axis` references: unknown or unused axes, values a bound field rejects, and moving a
plan problem to the sweep value that caused it. Each problem names the axis and the field and is
located at the value's own YAML line (`config.sweep` has the section's shapes)."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from ivx.config import sweep as sweeps
from ivx.config.problems import from_validation
from ivx.config.schema import Intervention
from ivx.core.errors import Problem, dotted

Locate = Callable[[tuple, str], Problem]  # LoadedConfig.problem


def refs(raw: dict[str, Any], locate: Locate) -> list[Problem]:
    """Every `$axis` (at any depth of an intervention) must name a sweep axis; every axis must be used."""
    sweep = raw.get("sweep")
    values = sweeps.axis_values(sweep)
    problems: list[Problem] = []
    used: set[str] = set()
    axes = list(values)
    interventions = raw.get("interventions")
    for i, iv in enumerate(interventions if isinstance(interventions, list) else []):
        for path, name in sweeps.refs_in(iv) if isinstance(iv, dict) else []:
            used.add(name)
            if name not in values:
                near = difflib.get_close_matches(name, axes, n=1)
                hint = f"did you mean ${near[0]}? " if near else ""
                message = f"unknown sweep axis '${name}'; {hint}sweep axes: {axes or 'none'}"
                problems.append(locate(("interventions", i, *path), message))
    for axis in axes:
        if axis not in used:
            where = sweeps.value_path(sweep, axis, 0)[:-1]
            problems.append(locate(where, f"sweep axis {axis!r} is not used by any intervention (${axis})"))
    return problems


def values(
    raw: dict[str, Any], templated: dict[str, Any], found: list[list[sweeps.Ref]], locate: Locate
) -> list[Problem]:
    """Every value of an axis bound to a field the schema takes no `$axis` in, validated in its place
    and reported at the value (`$coef = 'a' (bound to `coefficient`): ...`)."""
    sweep = raw.get("sweep")
    axis_values = sweeps.axis_values(sweep)
    problems: list[Problem] = []
    for i, bound in enumerate(found):
        for path, axis in bound:
            listed = axis_values.get(axis)  # 'all' is expanded by the plan (`grid`), not listed here
            for j, value in enumerate(listed if isinstance(listed, list) else []):
                data = sweeps.put(templated["interventions"][i], path, value)
                try:
                    Intervention.model_validate(data)
                except ValidationError as exc:
                    where = sweeps.value_path(sweep, axis, j)
                    for p in from_validation(exc, data, lambda loc, msg: Problem("", None, dotted(loc), msg)):
                        message = f"${axis} = {value!r} (bound to `{dotted(path)}`): {p.message}"
                        problems.append(locate(where, message))
    return problems


def at_value(
    raw: dict[str, Any], index: int, point: dict[str, Any], problem: Problem, locate: Locate
) -> Problem:
    """A problem of intervention `index`'s field moved to the sweep value it was bound to."""
    prefix = f"interventions[{index}]."
    field = problem.path.removeprefix(prefix)
    iv = raw["interventions"][index]
    bound = {dotted(path): axis for path, axis in sweeps.refs_in(iv)} if isinstance(iv, dict) else {}
    axis = bound.get(field) if problem.path.startswith(prefix) else None
    sweep = raw.get("sweep")
    taken = sweeps.axis_values(sweep).get(axis) if axis else None
    if axis is None or axis not in point or not isinstance(taken, list) or point[axis] not in taken:
        return problem
    where = sweeps.value_path(sweep, axis, taken.index(point[axis]))
    return locate(where, f"${axis} = {point[axis]!r} (bound to `{field}`): {problem.message}")
