"""Every input that reaches the YAML loader ends in exit 0 or exit 2 with problem lines, never a traceback.

Generated YAML texts (mutations of a valid config's text and free-form YAML-ish text), generated
`--set` overrides, and the explicit held-out cases: integers too long for Python's str→int
conversion (5,000 digits) in the config, in `--set` values and keys, in JSONL and JSON-array
prompt files, NaN/Infinity and deep nesting in prompt files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from ivx.cli.app import app
from ivx.config import loader

runner = CliRunner()
HUGE = "9" * 5000
BASE = """\
name: inputs
model: {name: ivx-toy, dtype: float32}
seed: 0
prompts:
  - {base: "According to the map , Zormoxis is located in the city of", subject: Zormoxis, target: " Quajunar"}
corrupt: {kind: noise, positions: subject, scale: 3.0, samples: 2}
sweep: {layer: all}
interventions:
  - {kind: vanilla, component: block_output, layer: $layer, position: last}
metrics: [indirect_effect]
output: {logits: last, plots: false}
"""
PROMPTS_FILE = BASE.replace(
    '  - {base: "According to the map , Zormoxis is located in the city of", subject: Zormoxis, '
    'target: " Quajunar"}\n',
    "  file: prompts.jsonl\n",
).replace("prompts:\n", "prompts:\n")
RECORD = {"base": "According to the map , Zormoxis is located in the city of", "subject": "Zormoxis"}


def _validate(config: Path, *sets: str) -> tuple[int, list[str]]:
    """Exit code and non-empty output lines of `ivx validate`; fails on a traceback or an escaped exception."""
    args = ["validate", str(config)] + [a for s in sets for a in ("--set", s)]
    result = runner.invoke(app, args)
    assert result.exit_code in (0, 2), (result.exit_code, result.output[-2000:], repr(result.exception))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    if result.exit_code == 2:
        assert lines, "exit 2 without a message"
    return result.exit_code, lines


def _problems(lines: list[str]) -> list[str]:
    return [line for line in lines if not line.endswith("problem(s) found; nothing was run.")]


def _write(tmp: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp / name
    path.write_text(text, encoding="utf-8")
    return path


def test_the_base_config_is_valid(tmp_path: Path) -> None:
    assert _validate(_write(tmp_path, BASE))[0] == 0


# ---- the held-out case and its relatives: one line, exit 2, at the right line -----------------------
@pytest.mark.parametrize(
    ("old", "new", "line"),
    [
        ("seed: 0", f"seed: {HUGE}", 3),
        ("seed: 0", f"seed: -{HUGE}", 3),
        ("seed: 0", "seed: 0x" + "f" * 5000, 3),
        ("samples: 2", f"samples: {HUGE}", 6),
        ("layer: all", f"layer: [{HUGE}]", 7),
    ],
    ids=["seed", "negative", "hex", "samples", "sweep"],
)
def test_huge_yaml_integer_is_one_problem_at_its_line(tmp_path: Path, old: str, new: str, line: int) -> None:
    path = _write(tmp_path, BASE.replace(old, new))
    code, lines = _validate(path)
    [problem] = _problems(lines)
    assert code == 2
    assert problem.startswith(f"{path}:{line}"), problem
    assert "integer of 5,00" in problem and "out of range" in problem, problem
    assert len(problem) < 400, problem  # the value is not echoed in full


def test_long_but_readable_integers_still_reach_the_schema(tmp_path: Path) -> None:
    """60 digits parse (the schema names the field and its bound); 101 digits are refused at parse."""
    ok = loader.parse("a: " + "9" * loader.MAX_INT_DIGITS)
    assert ok == {"a": int("9" * loader.MAX_INT_DIGITS)}
    code, lines = _validate(_write(tmp_path, BASE.replace("samples: 2", "samples: " + "9" * 60)))
    [problem] = _problems(lines)
    assert code == 2 and "corrupt.samples" in problem, problem
    with pytest.raises(Exception, match="101 digits is out of range"):
        loader.parse("a: " + "9" * 101)


@pytest.mark.parametrize(
    "assignment",
    [f"seed={HUGE}", f"corrupt.samples=[{HUGE}]", f"interventions.{HUGE}.layer=1", "seed=" + "[" * 5000],
    ids=["value", "list", "key", "deep"],
)
def test_huge_set_values_and_keys_are_one_problem(tmp_path: Path, assignment: str) -> None:
    code, lines = _validate(_write(tmp_path, BASE), assignment)
    problems = _problems(lines)
    assert code == 2 and len(problems) == 1, lines
    assert len(problems[0]) < 400, problems[0]


def test_set_with_an_integer_key_still_indexes_lists(tmp_path: Path) -> None:
    code, lines = _validate(_write(tmp_path, BASE), "interventions.-1.component=block_outpt")
    [problem] = _problems(lines)
    assert code == 2 and "interventions[0].component" in problem and "block_outpt" in problem, problem


@pytest.mark.parametrize(
    ("line", "expect"),
    [
        ('{"base": "x", "target": ' + HUGE + "}", "too long to read"),
        ('{"base": "x", "target": NaN}', "target"),
        ('{"base": "x", "target": Infinity}', "target"),
        ('{"base": "x", "target": -Infinity}', "target"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("[" + HUGE + "]", "too long to read"),
        ("[" * 50 + "]" * 50, "a record must be a JSON object, got list"),
        (json.dumps(list(range(500))), "a record must be a JSON object"),
        ("NaN", "a record must be a JSON object, got NaN"),
    ],
    ids=["huge", "nan", "inf", "-inf", "deep", "huge_in_list", "nested_list", "long_list", "bare_nan"],
)
def test_jsonl_prompt_files_with_odd_values_are_one_problem_at_their_line(
    tmp_path: Path, line: str, expect: str
) -> None:
    good = json.dumps({**RECORD, "target": " Quajunar"})
    (tmp_path / "prompts.jsonl").write_text(good + "\n" + line + "\n")
    code, lines = _validate(_write(tmp_path, PROMPTS_FILE))
    problems = _problems(lines)
    assert code == 2 and len(problems) == 1, lines
    assert "prompts.jsonl:2" in problems[0] and expect in problems[0], problems[0]
    assert len(problems[0]) < 400, problems[0]


@pytest.mark.parametrize(
    ("body", "expect"),
    [
        ('[{"base": "x", "target": ' + HUGE + "}]", "too long to read"),
        ("[" + "[" * 100_000 + "]" * 100_000 + "]", "nested too deeply"),
        ('[{"base": "x", "target": NaN}]', "target"),
    ],
    ids=["huge", "deep", "nan"],
)
def test_json_array_prompt_files_with_odd_values_are_one_problem(
    tmp_path: Path, body: str, expect: str
) -> None:
    (tmp_path / "prompts.json").write_text(body)
    config = _write(tmp_path, PROMPTS_FILE.replace("prompts.jsonl", "prompts.json"))
    code, lines = _validate(config)
    problems = _problems(lines)
    assert code == 2 and len(problems) == 1, lines
    assert "prompts.json" in problems[0] and expect in problems[0], problems[0]


# ---- generated inputs ------------------------------------------------------------------------------
YAML_BITS = st.sampled_from(
    [
        ":",
        " ",
        "\n",
        "- ",
        "[",
        "]",
        "{",
        "}",
        ",",
        "'",
        '"',
        "&a",
        "*a",
        "!!int",
        "!!python/object",
        "#",
        "|",
        ">",
        "?",
        "~",
        "null",
        "true",
        "yes",
        ".nan",
        "-.inf",
        "1e999",
        "0x1F",
        "0o7",
        "0b1",
        "1:2:3",
        HUGE,
        "-" + HUGE,
        "9" * 200,
        "$layer",
        "all",
        "last",
        "seed",
        "prompts",
        "layer",
        "\t",
        "%YAML 1.1",
        "---",
        "...",
        "\x00",
        "\ufeff",
        "é",
    ]
)
yaml_texts = st.lists(st.one_of(YAML_BITS, st.text(max_size=6)), max_size=25).map("".join)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_generated_yaml_texts_exit_0_or_2(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    if data.draw(st.booleans()):
        text = data.draw(yaml_texts)
    else:  # splice generated text into the valid config
        start = data.draw(st.integers(0, len(BASE)))
        end = data.draw(st.integers(start, min(len(BASE), start + 40)))
        text = BASE[:start] + data.draw(yaml_texts) + BASE[end:]
    path = Path(tmp_path_factory.mktemp("yaml")) / "config.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    _validate(path)


SET_KEYS = st.sampled_from(
    ["seed", "name", "corrupt.samples", "corrupt", "sweep.layer", "interventions.0.layer", "interventions.-1",
     "interventions.7.kind", "prompts.0.base", "model.name", "output", "batch.size", "", ".", "a..b", "0",
     "metrics.0", "sweep", "interventions." + HUGE]
)  # fmt: skip
set_values = st.one_of(yaml_texts, st.text(max_size=12), st.sampled_from([HUGE, "[1, 2]", "{a: 1}", "", "="]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.one_of(SET_KEYS, st.text(max_size=8)), set_values), min_size=1, max_size=3))
def test_generated_set_overrides_exit_0_or_2(
    tmp_path_factory: pytest.TempPathFactory, overrides: list[tuple[str, str]]
) -> None:
    path = _write(Path(tmp_path_factory.mktemp("set")), BASE)
    _validate(path, *(f"{key}={value}" for key, value in overrides))
