"""Config problems: where (file:line, dotted path) and what, collected rather than raised one by one.

`Problem` is one thing wrong; `ConfigError` carries all of them, collapsing problems that differ
only in the prompt they occur in into one line with a count; `from_validation` turns pydantic's
errors into problems located at the YAML key they concern.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from ivx.schema import Experiment


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: where it is and what is wrong."""

    file: str
    line: int | None
    path: str
    message: str

    def format(self) -> str:
        """Render as `file:line  dotted.path  message`."""
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}  {self.path or '<root>'}  {self.message}"


_PROMPT = re.compile(r"\bprompt (\d+)")
_TOKENS = re.compile(r"\((\d+) tokens\)")


def collapse(problems: list[Problem]) -> list[Problem]:
    """One problem per distinct (place, message) where messages differ only in the prompt:
    `position 9 is outside the prompt (7 tokens)` in 50 prompts is one line with the count."""
    groups: dict[tuple[str, int | None, str, str], list[Problem]] = {}
    for p in problems:
        shape = _TOKENS.sub("(# tokens)", _PROMPT.sub("prompt #", p.message))
        groups.setdefault((p.file, p.line, p.path, shape), []).append(p)
    out: list[Problem] = []
    for (file, line, path, shape), members in groups.items():
        ids = list(dict.fromkeys(m.group(1) for p in members for m in [_PROMPT.search(p.message)] if m))
        if len(members) == 1 or len(ids) < 2:
            out.append(members[0])
            continue
        lengths = sorted({int(m) for p in members for m in _TOKENS.findall(p.message)})
        span = f"{lengths[0]}–{lengths[-1]}" if len(lengths) > 1 else str(lengths[0]) if lengths else "#"
        listed = ", ".join(ids[:5]) + (", …" if len(ids) > 5 else "")
        message = shape.replace("prompt #", f"{len(ids)} prompts ({listed})", 1).replace("prompt #", "each")
        out.append(Problem(file, line, path, message.replace("(# tokens)", f"({span} tokens)")))
    return out


class ConfigError(Exception):
    """Raised with every problem found in a config (never just the first); problems that differ
    only in the prompt they occur in are collapsed into one with a count."""

    def __init__(self, problems: list[Problem]) -> None:
        problems = collapse(list(dict.fromkeys(problems)))
        super().__init__("\n".join(p.format() for p in problems))
        self.problems = problems


def dotted(path: tuple) -> str:
    """A YAML path as `interventions[0].layer`."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


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
