"""The experiment-file documentation, generated from the schema itself (`ivx schema`).

Every field of every section with its type, default and description, so the documentation can
never drift from what the validator accepts.
"""

from __future__ import annotations

import re
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from ivx.config import fields, inputs, sae_train, schema, settings
from ivx.core import interventions, metrics


def sections() -> dict[str, type[BaseModel]]:
    """Section name (as written in a config) → its model; `experiment` is the top level."""
    return {
        "experiment": schema.Experiment,
        "model": inputs.ModelSpec,
        "prompts": inputs.PromptRecord,
        "prompts.file": inputs.PromptFile,
        "corrupt": schema.Corrupt,
        "interventions": schema.Intervention,
        "interventions.contrast": schema.Contrast,
        "interventions.receivers": schema.Receiver,
        "output": settings.Output,
        "batch": settings.Batch,
        "ray": settings.Ray,
        "trace": settings.Trace,
        "attribution": settings.Attribution,
        "attribution.verify": settings.Verify,
        "generate": settings.Generate,
        "train": settings.Train,
        "sae_train": sae_train.SaeTrain,
    }


def type_name(annotation: Any) -> str:
    """A short, readable rendering of a field's type (Literal values spelled out)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(a) if isinstance(a, str) else str(a) for a in args)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        parts = [type_name(a) for a in args if a is not type(None)]
        text = " | ".join(dict.fromkeys(parts))
        return f"{text} | null" if type(None) in args else text
    if origin in (list, tuple, dict):
        inner = ", ".join(type_name(a) for a in args if a is not Ellipsis)
        return f"{origin.__name__}[{inner}]" if inner else origin.__name__
    if isinstance(annotation, type):
        return annotation.__name__
    return re.sub(r"\btyping\.|\bivx\.schema\.", "", str(annotation))


# fields typed `Any` plus a validator: spell out what the validator accepts
VALIDATED = {
    "_check_kind": " | ".join(fields.KINDS) + " (or pyvene's class names)",
    "_check_component": " | ".join(fields.COMPONENT_NAMES),
    "_check_layer": "int | list[int] | 'all' | $axis",
    "check_position": "int (negative from the end) | "
    + " | ".join(repr(k) for k in fields.POSITION_KEYWORDS)
    + " | list | $axis",
    "_check_head": "int | list[int] | 'all' | $axis | null",
    "_check_positive": "int > 0 | $axis | null",
    "_check_feature": "int | list[int] | 'all' | $axis | null",
    "_check_sever": " | ".join(repr(k) for k in fields.SEVERABLE) + " | 'none' | $axis | null",
}


def _field_type(field: Any) -> str:
    for meta in field.metadata:
        name = getattr(getattr(meta, "func", None), "__name__", "")
        if name in VALIDATED:
            return VALIDATED[name]
    return type_name(field.annotation)


def rows(section: str) -> list[dict[str, str]]:
    """One row per field of a section: name, type, default ('required' when none), description."""
    model = sections()[section]
    out = []
    for name, field in model.model_fields.items():
        if field.default is not PydanticUndefined:
            default = "null" if field.default is None else repr(field.default)
        elif field.default_factory is not None:
            made = field.default_factory()  # type: ignore[call-arg]
            default = type(made).__name__ + "()" if isinstance(made, BaseModel) else repr(made)
        else:
            default = "required"
        out.append(
            {
                "field": field.alias or name,
                "type": _field_type(field),
                "default": default,
                "description": field.description or "",
            }
        )
    return out


def kind_rows() -> list[dict[str, str]]:
    """One row per intervention kind, read from the kind table (`interventions.KINDS`)."""
    return [
        {
            "kind": spec.name,
            "alias": spec.alias or "",
            "source": "yes" if spec.needs_source else "no",
            "trainable": "yes" if spec.trainable else "no",
            "fields": ", ".join(sorted(spec.fields))
            + (f" (needs {' or '.join(spec.requires)})" if spec.requires else ""),
            "description": spec.description,
        }
        for spec in interventions.KINDS.values()
    ]


def metric_rows() -> list[dict[str, str]]:
    """One row per metric, read from the metric table (`metrics.METRICS`)."""
    return [
        {
            "metric": m.name,
            "needs": ", ".join(sorted(m.needs)) or "-",
            "direction": m.direction,
            "description": m.description,
        }
        for m in metrics.METRICS.values()
    ]


def _table(rows: list[dict[str, str]]) -> list[str]:
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for row in rows:
        cells = [f"`{row[head[0]]}`"] + [row[k] for k in head[1:]]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return lines


def tables_markdown() -> list[str]:
    """The kind and metric tables as Markdown sections."""
    common = ", ".join(sorted(interventions.COMMON_FIELDS - {"kind"}))
    return [
        "## Intervention kinds",
        "",
        f"Every kind takes {common}; the `fields` column lists what else it reads (any other field "
        "is an error). `source`: copies a source-run activation unless a `vector` replaces it. "
        "`alias`: pyvene's class name, accepted too.",
        "",
        *_table(kind_rows()),
        "",
        "## Metrics",
        "",
        "`needs`: record fields (target, foil) or a corrupted/source run to contrast with. "
        "`direction`: which way a larger effect on the target moves the value.",
        "",
        *_table(metric_rows()),
        "",
    ]


def markdown() -> str:
    """The whole reference as Markdown (docs/config_reference.md is generated from this)."""
    lines = [
        "# Experiment-file reference",
        "",
        "Generated from ivx's schema by `ivx schema --markdown`; `ivx schema SECTION` prints one section.",
        "",
    ]
    for section, model in sections().items():
        lines += [f"## `{section}`", "", (model.__doc__ or "").strip(), ""]
        lines += ["| field | type | default | description |", "| --- | --- | --- | --- |"]
        for row in rows(section):
            default = row["default"] if row["default"] == "required" else f"`{row['default']}`"
            cells = [f"`{row['field']}`", row["type"], default, row["description"]]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        lines.append("")
    return "\n".join(lines + tables_markdown())
