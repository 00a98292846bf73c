"""Field validators of the experiment schema, and the checks derived from the kind table.

Pure data, no torch. The per-field validators (positions, layers, heads, components, kinds)
accept `$axis` references; `sweep_value_problems` runs the same validators on the values of the
axis a field is bound to, so a bad value is reported at the sweep's own line, and
`kind_field_problems` rejects fields the intervention's kind does not read (from
`interventions.KINDS`), so nothing the user sets is silently ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator

from ivx.config import module_names, tl_names
from ivx.config import sweep as sweeps
from ivx.config.sweep import is_ref
from ivx.core import interventions, metrics

COMPONENT_NAMES: tuple[str, ...] = (
    "embedding",
    "block_input",
    "block_output",
    "attention_input",
    "attention_output",
    "attention_value_output",
    "head_attention_value_output",
    "head_attention_pattern",
    "query_output",
    "key_output",
    "value_output",
    "head_query_output",
    "head_key_output",
    "head_value_output",
    "mlp_input",
    "mlp_activation",
    "mlp_output",
    "residual_mid",
    "mixer_input",  # state-space / linear-attention mixers (model/mixers.py)
    "mixer_output",
    "router_logits",  # mixture-of-experts blocks (model/moe.py)
    "experts_output",
)

# derived from the kind table (interventions.KINDS) and the metric table (metrics.METRICS)
KINDS: tuple[str, ...] = tuple(interventions.KINDS)
TRAINABLE_KINDS: frozenset[str] = frozenset(k for k, spec in interventions.KINDS.items() if spec.trainable)
# pyvene's class names are accepted as aliases of ivx's kinds.
KIND_ALIASES: dict[str, str] = dict(interventions.ALIASES)

POSITION_KEYWORDS: tuple[str, ...] = ("last", "all", "subject", "subject_first", "subject_last")

METRICS: tuple[str, ...] = tuple(metrics.METRICS)


def _check_position_atom(value: Any) -> None:
    if isinstance(value, bool):
        raise ValueError(f"position {value!r} must be an integer or one of {list(POSITION_KEYWORDS)}")
    if isinstance(value, int) or is_ref(value):
        return
    if isinstance(value, str):
        if value in POSITION_KEYWORDS:
            return
        import difflib

        near = difflib.get_close_matches(value, POSITION_KEYWORDS, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ValueError(
            f"unknown position {value!r}{hint}; expected an integer (negative counts from the end), "
            f"{', '.join(POSITION_KEYWORDS)}, a list of these, or a $axis reference"
        )
    raise ValueError(f"position {value!r} must be an integer, a keyword or a list")


def check_position(value: Any) -> Any:
    """Validate a position spec: int, keyword, `$axis`, or a non-empty list of ints/keywords."""
    if isinstance(value, list):
        if not value:
            raise ValueError("position list is empty")
        for atom in value:
            _check_position_atom(atom)
        return value
    _check_position_atom(value)
    return value


def _check_layer(value: Any) -> Any:
    if is_ref(value) or value == "all":
        return value
    items = value if isinstance(value, list) else [value]
    if isinstance(value, list) and not value:
        raise ValueError("layer list is empty")
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int):
            raise ValueError(
                f"layer {item!r} must be an integer (negative counts from the last layer), "
                "a list of integers, all, or a $axis reference"
            )
    return value


def _check_head(value: Any) -> Any:
    if value is None or is_ref(value) or value == "all":
        return value
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int) or item < 0:
            raise ValueError(
                f"head {item!r} must be a non-negative integer, a list, all, or a $axis reference"
            )
    return value


def _check_component(value: Any) -> Any:
    if is_ref(value):
        return value
    if isinstance(value, dict) or module_names.is_path(value):
        return module_names.from_value(value)  # any module inside a block, by path
    if not isinstance(value, str):
        raise ValueError(f"component must be a string, got {value!r}")
    if value not in COMPONENT_NAMES and tl_names.is_tl(value):
        return tl_names.component(value)  # a TransformerLens hook name: its ivx component
    if value not in COMPONENT_NAMES:
        import difflib

        near = difflib.get_close_matches(value, COMPONENT_NAMES, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise ValueError(f"unknown component {value!r}; {hint}valid: {', '.join(COMPONENT_NAMES)}")
    return value


def _check_kind(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError(f"kind must be a string, got {value!r}")
    if is_ref(value):
        return value
    if value in KIND_ALIASES:
        return KIND_ALIASES[value]
    if value in KINDS:
        return value
    import difflib

    near = difflib.get_close_matches(value, list(KINDS) + list(KIND_ALIASES), n=1)
    hint = f"did you mean {near[0]!r}? " if near else ""
    raise ValueError(f"unknown intervention kind {value!r}; {hint}valid: {', '.join(KINDS)}")


def _check_positive(value: Any) -> Any:
    if value is None or is_ref(value):
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{value!r} must be a positive integer or a $axis reference")
    return value


SEVERABLE: tuple[str, ...] = ("mlp_output", "attention_output")


def _check_sever(value: Any) -> Any:
    if value is None or value == "none":
        return None
    if is_ref(value) or value in SEVERABLE:
        return value
    raise ValueError(f"sever {value!r} must be one of {', '.join(SEVERABLE)}, none, or a $axis reference")


Sever = Annotated[Any, AfterValidator(_check_sever)]
PositiveOrRef = Annotated[Any, AfterValidator(_check_positive)]
Position = Annotated[Any, AfterValidator(check_position)]
Layer = Annotated[Any, AfterValidator(_check_layer)]
Head = Annotated[Any, AfterValidator(_check_head)]
Component = Annotated[Any, AfterValidator(_check_component)]
Kind = Annotated[Any, AfterValidator(_check_kind)]


def check_window(value: Any) -> Any:
    """A layer window: a size ≥ 1, or {component: size} with real component names."""
    import difflib

    items = value.items() if isinstance(value, dict) else [("window", value)]
    for key, size in items:
        if size is not None and size < 1:
            raise ValueError(f"window must be ≥ 1 (got {size} for {key})")
        if isinstance(value, dict) and key not in COMPONENT_NAMES:
            near = difflib.get_close_matches(key, COMPONENT_NAMES, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ValueError(f"window key {key!r} is not a component name{hint}")
    return value


# validators of the intervention fields a sweep axis can bind to
BINDABLE: dict[str, Callable[[Any], Any]] = {
    "kind": _check_kind,
    "component": _check_component,
    "layer": _check_layer,
    "position": check_position,
    "source_position": check_position,
    "head": _check_head,
    "interchange_dim": _check_positive,
    "low_rank_dimension": _check_positive,
    "sever": _check_sever,
}

Found = list[tuple[tuple[Any, ...], str]]  # (YAML path, message) pairs


def sweep_value_problems(raw: dict[str, Any]) -> Found:
    """Sweep values the field they are bound to rejects, each located at the value itself."""
    sweep = raw.get("sweep")
    ivs = raw.get("interventions")
    if not isinstance(sweep, dict) or not isinstance(ivs, list):
        return []
    axes = sweeps.axis_values(sweep)
    found: Found = []
    seen: set[tuple[str, str]] = set()
    for iv in ivs:
        for field, value in iv.items() if isinstance(iv, dict) else []:
            if not is_ref(value) or field not in BINDABLE:
                continue
            axis = value[1:]
            values = axes.get(axis)
            if not isinstance(values, list) or (axis, field) in seen:
                continue
            seen.add((axis, field))
            for j, item in enumerate(values):
                try:
                    BINDABLE[field](item)
                except ValueError as exc:
                    found.append((sweeps.value_path(sweep, axis, j), f"${axis} is bound to `{field}`: {exc}"))
    return found


def _kinds_of(value: Any, sweep: Any) -> list[interventions.KindSpec]:
    """The table rows an intervention's `kind` can take (every value of a swept `$axis`)."""
    values = sweeps.axis_values(sweep).get(value[1:]) if is_ref(value) else [value]
    specs = []
    for kind in values if isinstance(values, list) else []:
        if isinstance(kind, str) and interventions.ALIASES.get(kind, kind) in interventions.KINDS:
            specs.append(interventions.spec(kind))
    return specs


def kind_field_problems(raw: dict[str, Any], known: frozenset[str]) -> Found:
    """Fields set on an intervention that its kind never reads (a silent no-op otherwise)."""
    ivs = raw.get("interventions")
    found: Found = []
    for i, iv in enumerate(ivs if isinstance(ivs, list) else []):
        if not isinstance(iv, dict):
            continue
        specs = _kinds_of(iv.get("kind"), raw.get("sweep"))
        if not specs:
            continue  # an unknown kind is reported by the schema
        for field in iv:
            if field not in known or field in interventions.COMMON_FIELDS:
                continue
            if any(field in spec.fields for spec in specs):
                continue
            names = ", ".join(repr(spec.name) for spec in specs)
            site = ", ".join(sorted(interventions.COMMON_FIELDS - {"kind"}))
            takes = sorted(set().union(*(spec.fields for spec in specs)))
            found.append(
                (
                    ("interventions", i, field),
                    f"`{field}` is not used by kind {names} (its own fields: {', '.join(takes) or 'none'}; "
                    f"the others are the site fields: {site})",
                )
            )
    return found


def bundle_problems(raw: dict[str, Any]) -> Found:
    """Trainable kinds run from a trained `bundle`; without one the config must be a training
    config (a `train:` section, for `ivx train`)."""
    ivs = raw.get("interventions")
    if "train" in raw or not isinstance(ivs, list):
        return []
    found: Found = []
    for i, iv in enumerate(ivs):
        if not isinstance(iv, dict) or iv.get("bundle") is not None:
            continue
        trainable = [spec.name for spec in _kinds_of(iv.get("kind"), raw.get("sweep")) if spec.trainable]
        if trainable:
            found.append(
                (
                    ("interventions", i, "kind"),
                    f"kind {trainable[0]!r} needs a trained `bundle` (a path or hf://user/name); to "
                    "train one, add a `train:` section and run `ivx train` on this config",
                )
            )
    return found
