"""Bounded fuzz: random mutations of a valid config through `ivx validate` never crash.

Every outcome must be exit 0 (still valid) or exit 2 with problem lines; never a traceback
or another exit code.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from ivx.cli.app import app

runner = CliRunner()
BASE: dict[str, Any] = {
    "name": "fuzz",
    "model": {"name": "ivx-toy", "dtype": "float32"},
    "seed": 0,
    "prompts": [
        {
            "base": "According to the map , Zormoxis is located in the city of",
            "subject": "Zormoxis",
            "target": " Quajunar",
        }
    ],
    "corrupt": {"kind": "noise", "positions": "subject", "scale": 3.0, "samples": 2},
    "sweep": {"layer": "all"},
    "interventions": [
        {"kind": "vanilla", "component": "block_output", "layer": "$layer", "position": "last"}
    ],
    "metrics": ["indirect_effect"],
    "batch": {"size": "auto"},
    "output": {"logits": "last", "plots": False},
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["all", "last", "subject", "$layer", "auto", "yes", "block_output", "hf://../x", ""]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value in the config."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out.extend(paths(value, prefix + (key,)))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out.extend(paths(value, prefix + (i,)))
    return out


ALL_PATHS = paths(BASE)


def mutate(config: dict, path: tuple, action: str, value: Any) -> dict:
    out = copy.deepcopy(config)
    node = out
    for part in path[:-1]:
        node = node[part]
    if action == "delete":
        del node[path[-1]]
    elif action == "replace":
        node[path[-1]] = value
    elif isinstance(node, dict):
        node[str(value)[:8] or "x"] = value  # an extra key next to this one
    return out


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(st.sampled_from(ALL_PATHS), st.sampled_from(["replace", "delete", "add"]), values),
        min_size=1,
        max_size=3,
    )
)
def test_mutated_configs_exit_0_or_2_without_traceback(tmp_path_factory, mutations) -> None:
    config = BASE
    for path, action, value in mutations:
        try:
            config = mutate(config, path, action, value)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed this path
    file = Path(tmp_path_factory.mktemp("fuzz")) / "config.yaml"
    file.write_text(yaml.safe_dump(config, allow_unicode=True))
    result = runner.invoke(app, ["validate", str(file)])
    assert result.exit_code in (0, 2), (result.exit_code, result.output, repr(result.exception))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        assert result.output.strip(), "exit 2 without a message"
