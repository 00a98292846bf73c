"""pydantic's validation errors as `Problem`s located at the YAML key they concern (`from_validation`)."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from ivx.config.schema import Experiment
from ivx.core.errors import Problem


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through Optional, list, dict, Annotated)."""
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if origin is None:
        return []
    out: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        out.extend(_models_in(arg))
    if origin in (typing.Union, types.UnionType, list, dict, typing.Annotated):
        return out
    return out


def _allowed_keys(loc: tuple) -> list[str]:
    """Field names allowed at the mapping that contains the last element of `loc`."""
    models: list[type[BaseModel]] = [Experiment]
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        nxt: list[type[BaseModel]] = []
        for model in models:
            info = model.model_fields.get(part)
            if info is not None:
                nxt.extend(_models_in(info.annotation))
        models = nxt
    keys: list[str] = []
    for model in models:
        keys.extend(model.model_fields)
    return keys


def _clean_loc(loc: tuple, raw: Any) -> tuple:
    """Drop pydantic's union/tag markers from an error location, keeping real YAML keys."""
    out: list[Any] = []
    node = raw
    for part in loc:
        if isinstance(node, dict) and part in node:
            out.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            out.append(part)
            node = node[part]
        elif isinstance(part, str) and part[:1].isupper():
            continue  # a union member's class name (Corrupt in `Corrupt | list[Corrupt]`), not a key
        elif isinstance(node, dict) and isinstance(part, str) and part not in node:
            # a missing or extra key: keep it only if it is a plausible field name
            if part.isidentifier() and ("[" not in part):
                out.append(part)
            node = None
        else:
            continue
    return tuple(out)


def from_validation(
    exc: ValidationError, raw: dict, locate: Callable[[tuple, str], Problem]
) -> list[Problem]:
    """One Problem per distinct pydantic error, located at its YAML key, with a readable message."""
    problems: list[Problem] = []
    seen: set[tuple] = set()
    errors = exc.errors()
    for err in errors:
        loc = _clean_loc(tuple(err["loc"]), raw)
        kind = err["type"]
        if kind == "list_type" and isinstance(err.get("input"), dict) and len(errors) > 1:
            continue  # `X | list[X]` given a mapping: the X branch's error is the useful one
        message = err["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        if kind == "extra_forbidden":
            allowed = _allowed_keys(loc)
            near = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            message = f"unknown key {loc[-1]!r}; {hint}allowed: {', '.join(allowed)}"
        elif kind == "missing":
            message = f"required field {loc[-1]!r} is missing"
        elif kind == "literal_error":
            expected = err.get("ctx", {}).get("expected", "")
            options = [o.strip().strip("'") for o in expected.replace(" or ", ",").split(",")]
            near = difflib.get_close_matches(str(err.get("input")), options, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            message = f"{err.get('input')!r} is not allowed{hint}; expected {expected}"
        elif "input" in err and kind not in ("value_error", "assertion_error"):
            message = f"{message} (got {err['input']!r})"
        key = (loc, message)
        if key in seen:
            continue
        seen.add(key)
        problems.append(locate(loc, message))
    return problems
