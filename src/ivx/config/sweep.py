"""The `sweep:` section: product axes, zipped axes and named points, and `$axis` in any field.

    sweep:
      coef: [0, 1, 2]                      # a product axis: the grid is the product of all dimensions
      zip: {layer: [3, 5, 9], head: [1, 7, 2]}   # zipped axes: taken together, one dimension
      points:                              # named points: one dimension, plotted by name
        - {name: top1, layer: 3, head: 1}

Each dimension of the grid is a product axis, a zip group (several may be given as a list under
`zip:`) or the list of named points; a zip group is named after its axes (`layer/head`, values
`3/1`), the named points `point`. Any field of an intervention, at any depth (`coefficient`,
`receivers[0].head`, `contrast.positive`), may be a `$axis`: the loader swaps each such reference
outside the fields that take one natively for a stand-in value before validation (`templated`),
records where it was (`Intervention._refs`) and checks every value of the axis in its place
(`value_problems`); `plan.grid` puts the point's value back in every cell. Pure data, no torch.
"""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

REF = re.compile(r"^\$[A-Za-z_][A-Za-z0-9_]*$")


def is_ref(value: Any) -> bool:
    """True when `value` is a `$axis` reference string."""
    return isinstance(value, str) and bool(REF.match(value))


RESERVED = ("zip", "points")
POINT = "point"  # the dimension of the named points
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# intervention fields whose validators take a `$axis` themselves (config.fields.BINDABLE)
NATIVE = frozenset(
    ("kind", "component", "layer", "position", "head", "source_position", "sever")
    + ("interchange_dim", "low_rank_dimension")
)


@dataclass(frozen=True)
class Dimension:
    """One dimension of the grid: a product axis, a zip group or the named points."""

    name: str  # the results column and plot axis
    kind: str  # product | zip | points
    axes: tuple[str, ...]  # the `$axis` names it sets
    values: tuple[tuple[Any, ...], ...] | str  # per point, one value per axis ('all': a product axis)
    labels: tuple[Any, ...]  # the dimension's value per point (the axis value, `3/1`, or the name)


def _label(value: Any) -> str:
    return "+".join(_label(v) for v in value) if isinstance(value, list) else str(value)


def _zips(sweep: dict[str, Any]) -> list[dict[str, Any]]:
    groups = sweep.get("zip")
    if isinstance(groups, dict):
        return [groups]
    return [g for g in groups if isinstance(g, dict)] if isinstance(groups, list) else []


def shape_problems(sweep: Any) -> list[str]:
    """What is wrong with the section's shape (each message names the axis)."""
    if not isinstance(sweep, dict):
        return ["sweep must be a mapping of axis → values (plus optional zip: and points:)"]
    out: list[str] = []
    seen: list[str] = []

    def axis(name: Any, where: str) -> None:
        if not isinstance(name, str) or not _IDENT.match(name):
            out.append(f"{where}: sweep axis name {name!r} must be an identifier")
        elif name in seen:
            out.append(f"{where}: sweep axis {name!r} is set twice (an axis belongs to one dimension)")
        seen.append(str(name))

    for name, values in sweep.items():
        if name in RESERVED:
            continue
        axis(name, f"sweep.{name}")
        if values != "all" and (not isinstance(values, list) or not values):
            out.append(f"sweep.{name} must be a non-empty list of values or 'all'")
    raw_zip = sweep.get("zip")
    if raw_zip is not None and not (isinstance(raw_zip, dict) or isinstance(raw_zip, list) and raw_zip):
        out.append("sweep.zip must be {axis: [values], ...} or a list of such mappings")
    for group in [raw_zip] if isinstance(raw_zip, dict) else raw_zip if isinstance(raw_zip, list) else []:
        if not isinstance(group, dict) or len(group) < 1:
            out.append("sweep.zip: each group is a non-empty mapping {axis: [values], ...}")
            continue
        lengths = {}
        for name, values in group.items():
            axis(name, f"sweep.zip.{name}")
            if not isinstance(values, list) or not values:
                out.append(f"sweep.zip.{name} must be a non-empty list (zipped axes take no 'all')")
            else:
                lengths[name] = len(values)
        if len(set(lengths.values())) > 1:
            sizes = ", ".join(f"{k}: {v}" for k, v in lengths.items())
            out.append(f"sweep.zip: zipped axes need lists of one length ({sizes})")
    out += _points_problems(sweep.get("points"), axis)
    if "points" in sweep and POINT in sweep:
        out.append(f"sweep.{POINT}: the named points' dimension is called {POINT!r}; rename the axis")
    return out


def _points_problems(points: Any, axis: Callable[[Any, str], None]) -> list[str]:
    if points is None:
        return []
    if not isinstance(points, list) or not points or not all(isinstance(p, dict) for p in points):
        return ["sweep.points must be a non-empty list of {name: ..., axis: value, ...} mappings"]
    out: list[str] = []
    keys = [tuple(k for k in p if k != "name") for p in points]
    for name in keys[0]:
        axis(name, f"sweep.points.{name}")
    for j, (p, k) in enumerate(zip(points, keys, strict=True)):
        if not k:
            out.append(f"sweep.points[{j}] sets no axis")
        elif set(k) != set(keys[0]):
            out.append(
                f"sweep.points[{j}] sets {sorted(k)}, but points[0] sets {sorted(keys[0])}: "
                "every point sets the same axes"
            )
        if "name" in p and not isinstance(p["name"], str | int):
            out.append(f"sweep.points[{j}].name must be text")
    names = [str(p.get("name", "")) for p in points if "name" in p]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        out.append(f"sweep.points: point names must be unique ({', '.join(dupes)} repeats)")
    return out


def dimensions(sweep: dict[str, Any]) -> list[Dimension]:
    """The grid's dimensions in the section's order (a well-formed section: `shape_problems` is empty)."""
    out: list[Dimension] = []
    for name, values in sweep.items():
        if name == "zip":
            for group in _zips(sweep):
                axes = tuple(group)
                rows = tuple(zip(*(group[a] for a in axes), strict=True))
                labels = tuple("/".join(_label(v) for v in row) for row in rows)
                out.append(Dimension("/".join(axes), "zip", axes, rows, labels))
        elif name == "points":
            axes = tuple(k for k in values[0] if k != "name")
            rows = tuple(tuple(p[a] for a in axes) for p in values)
            labels = tuple(
                str(p["name"]) if "name" in p else ",".join(f"{a}={_label(p[a])}" for a in axes)
                for p in values
            )
            out.append(Dimension(POINT, "points", axes, rows, labels))
        else:
            vals = values if values == "all" else tuple((v,) for v in values)
            out.append(Dimension(name, "product", (name,), vals, () if values == "all" else tuple(values)))
    return out


def axis_values(sweep: Any) -> dict[str, Any]:
    """Every `$axis` → the values it takes, in order ('all' for an `all` product axis); lenient."""
    if not isinstance(sweep, dict):
        return {}
    out: dict[str, Any] = {}
    for name, values in sweep.items():
        if name == "zip":
            for group in _zips(sweep):
                out.update({a: v for a, v in group.items() if isinstance(a, str)})
        elif name == "points":
            for p in values if isinstance(values, list) else []:
                for a, v in p.items() if isinstance(p, dict) else []:
                    if a != "name":
                        out.setdefault(a, []).append(v)
        else:
            out[name] = values
    return out


def value_path(sweep: Any, axis: str, j: int) -> tuple:
    """The YAML path of the `j`-th value of `axis` (for problems located at the value)."""
    if not isinstance(sweep, dict):
        return ("sweep",)
    if axis in sweep and axis not in RESERVED:
        return ("sweep", axis, j)
    if isinstance(sweep.get("zip"), dict) and axis in sweep["zip"]:
        return ("sweep", "zip", axis, j)
    zips = sweep.get("zip")
    for g, group in enumerate(zips if isinstance(zips, list) else []):
        if isinstance(group, dict) and axis in group:
            return ("sweep", "zip", g, axis, j)
    if isinstance(sweep.get("points"), list):
        return ("sweep", "points", j, axis)
    return ("sweep",)


def grid(dims: list[Dimension], expand: dict[str, list[Any]]) -> Iterator[dict[str, Any]]:
    """Every grid point (member axes, plus each zip or points dimension's label), in order.

    `expand` gives the concrete values of `all` product axes."""
    options = []
    for dim in dims:
        if dim.kind == "product":
            vals = expand[dim.name] if dim.values == "all" else [row[0] for row in dim.values]
            options.append([{dim.name: v} for v in vals])
        else:
            rows = dim.values
            assert not isinstance(rows, str)
            options.append(
                [
                    {**dict(zip(dim.axes, row, strict=True)), dim.name: label}
                    for row, label in zip(rows, dim.labels, strict=True)
                ]
            )
    for combo in itertools.product(*options):
        point: dict[str, Any] = {}
        for part in combo:
            point.update(part)
        yield point


def size(dims: list[Dimension], expand: dict[str, list[Any]]) -> int:
    """Grid points `grid` yields."""
    n = 1
    for dim in dims:
        n *= len(expand[dim.name]) if dim.values == "all" else len(dim.values)
    return n


Ref = tuple[tuple[Any, ...], str]  # (path inside the intervention, axis)


def refs_in(value: Any, path: tuple = ()) -> list[Ref]:
    """Every `$axis` inside an intervention mapping, with its path."""
    if is_ref(value):
        return [(path, value[1:])]
    if isinstance(value, dict):
        return [r for k, v in value.items() for r in refs_in(v, (*path, k))]
    if isinstance(value, list):
        return [r for i, v in enumerate(value) for r in refs_in(v, (*path, i))]
    return []


def generic(path: tuple) -> bool:
    """True for a reference the schema does not take natively (anything but a top-level site field)."""
    return not (len(path) == 1 and path[0] in NATIVE)


def put(data: Any, path: tuple, value: Any) -> Any:
    """A copy of `data` with `value` at `path`."""
    out = copy.deepcopy(data)
    node = out
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return out


def stand_in(values: Any) -> Any:
    """The value a reference stands in for while the schema validates: the axis's first value."""
    return values[0] if isinstance(values, list) and values else 0


def templated(raw: dict[str, Any]) -> tuple[dict[str, Any], list[list[Ref]]]:
    """`raw` with every generic `$axis` of an intervention swapped for its axis's first value, and
    those references per intervention (unknown axes are left for the loader to report)."""
    ivs = raw.get("interventions")
    if not isinstance(ivs, list):
        return raw, []
    values = axis_values(raw.get("sweep"))
    out = dict(raw)
    out["interventions"] = []
    found: list[list[Ref]] = []
    for iv in ivs:
        refs = [r for r in refs_in(iv) if generic(r[0]) and r[1] in values] if isinstance(iv, dict) else []
        for path, axis in refs:
            iv = put(iv, path, stand_in(values[axis]))
        out["interventions"].append(iv)
        found.append(refs)
    return out, found
