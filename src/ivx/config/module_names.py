"""Module-path components by name: `{module: "model.layers.{layer}.mlp.act_fn", hook: output}` in
YAML is the component `module:model.layers.{layer}.mlp.act_fn@output` (`model/module_paths`
resolves it on a model). Pure strings, no torch.
"""

from __future__ import annotations

import re
from typing import Any

PREFIX = "module:"
HOOKS = ("output", "input")
PATTERN = re.compile(r"^module:([A-Za-z0-9_.{}]+)@(output|input)$")
EXAMPLE = "{module: model.layers.{layer}.mlp.act_fn, hook: output}"


def is_path(component: Any) -> bool:
    """Whether a component name is a module path (`module:<path>@<hook>`)."""
    return isinstance(component, str) and component.startswith(PREFIX)


def name(path: Any, hook: Any = "output") -> str:
    """The component name of a module path; ValueError saying what is wrong with it."""
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"component.module must be a non-empty module path, e.g. {EXAMPLE}; got {path!r}")
    if hook not in HOOKS:
        raise ValueError(f"component.hook must be one of {', '.join(HOOKS)}, got {hook!r}")
    rest = path.replace("{layer}", "")
    if not PATTERN.match(f"{PREFIX}{path}@{hook}") or "{" in rest or "}" in rest or ".." in path:
        raise ValueError(
            f"component.module {path!r} must be a dotted module path (letters, digits, _, .) with at "
            "most the placeholder {layer}, e.g. model.layers.{layer}.mlp.act_fn"
        )
    return f"{PREFIX}{path}@{hook}"


def from_value(value: Any) -> str:
    """A `component:` mapping {module, hook} or a `module:<path>@<hook>` string, as its name."""
    if isinstance(value, dict):
        extra = sorted(set(value) - {"module", "hook"})
        if extra:
            raise ValueError(f"component mapping takes only module and hook, not {', '.join(extra)}")
        return name(value.get("module"), value.get("hook", "output"))
    path, _, hook = str(value).removeprefix(PREFIX).rpartition("@")
    if not path:
        raise ValueError(f"component {value!r} must be module:<path>@output or module:<path>@input")
    return name(path, hook)
