"""Config loading: every class of mistake gives its exact `file:line  path  message`."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from ivx.config import loader as config
from ivx.core.errors import ConfigError

GOOD = """\
name: demo
model: {name: ivx-toy}
prompts:
  - base: "The Zorvan Tower is located in the city of"
    subject: "The Zorvan Tower"
    target: " Trelin"
sweep:
  layer: [0, 1]
interventions:
  - kind: vanilla
    component: block_output
    layer: $layer
    position: last
metrics: [target_prob]
"""


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems(path: Path, overrides: tuple[str, ...] = ()) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.load(path, overrides)
    return [p.format() for p in info.value.problems]


def test_good_config_loads(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, GOOD))
    assert cfg.experiment.interventions[0].layer == "$layer"
    assert cfg.records[0].subject == "The Zorvan Tower"
    assert cfg.line_of(("interventions", 0, "position")) == 13


def test_unknown_key_with_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("    position: last", "    positon: last"))
    (line,) = problems(path)
    assert line.startswith(
        f"{path}:13  interventions[0].positon  unknown key 'positon'; did you mean 'position'?"
    )


def test_bad_enum(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("model: {name: ivx-toy}", "model: {name: ivx-toy, dtype: float33}"))
    (line,) = problems(path)
    assert line.startswith(f"{path}:2  model.dtype  'float33' is not allowed (did you mean 'float32'?)")


def test_bad_kind_and_component_and_position_all_at_once(tmp_path: Path) -> None:
    text = GOOD.replace("kind: vanilla", "kind: vanila").replace("block_output", "block_outptu")
    text = text.replace("position: last", "position: lats")
    lines = problems(write(tmp_path, text))
    assert len(lines) == 3
    assert (
        "exp.yaml:10  interventions[0].kind  unknown intervention kind 'vanila'; did you mean 'vanilla'?"
        in lines[0]
    )
    assert (
        "exp.yaml:11  interventions[0].component  unknown component 'block_outptu'; did you mean 'block_output'?"
        in lines[1]
    )
    assert (
        "exp.yaml:13  interventions[0].position  unknown position 'lats' (did you mean 'last'?)" in lines[2]
    )


def test_unknown_axis_and_unused_axis(tmp_path: Path) -> None:
    lines = problems(write(tmp_path, GOOD.replace("layer: $layer", "layer: $layr")))
    assert lines[0].endswith(
        "interventions[0].layer  unknown sweep axis '$layr'; did you mean $layer? sweep axes: ['layer']"
    )
    assert ":12  " in lines[0]
    assert ":8  sweep.layer  sweep axis 'layer' is not used" in lines[1]


def test_missing_prompt_file(tmp_path: Path) -> None:
    text = GOOD.replace(
        '  - base: "The Zorvan Tower is located in the city of"\n    subject: "The Zorvan Tower"\n    target: " Trelin"\n',
        "  file: data/nope.jsonl\n",
    )
    (line,) = problems(write(tmp_path, text))
    assert ":4  prompts.file  prompt file 'data/nope.jsonl' not found" in line


def test_bad_jsonl_record_names_the_data_file_line(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "p.jsonl").write_text(
        '{"base": "a b c", "target": " d"}\n{"base": "x y", "subject": "zz"}\n{"bse": "q"}\n'
    )
    text = GOOD.replace(
        '  - base: "The Zorvan Tower is located in the city of"\n    subject: "The Zorvan Tower"\n    target: " Trelin"\n',
        "  file: data/p.jsonl\n",
    )
    lines = problems(write(tmp_path, text))
    assert any("p.jsonl:2" in ln and "subject 'zz' does not occur in base" in ln for ln in lines)
    assert any("p.jsonl:3" in ln and "unknown key 'bse'" in ln for ln in lines)


def test_duplicate_key_and_yaml_syntax(tmp_path: Path) -> None:
    lines = problems(write(tmp_path, GOOD + "seed: 1\nseed: 2\n"))
    assert any(":16  seed  duplicate key 'seed'" in ln for ln in lines)
    lines = problems(write(tmp_path, "name: [unclosed\n", "broken.yaml"))
    assert lines[0].startswith(str(tmp_path / "broken.yaml") + ":") and "invalid YAML" in lines[0]


def test_set_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    cfg = config.load(path, ("seed=7", "interventions.0.position=-2", "sweep.layer=[1]"))
    assert cfg.experiment.seed == 7
    assert cfg.experiment.interventions[0].position == -2
    assert cfg.experiment.sweep["layer"] == [1]
    lines = problems(path, ("metrics=[bogus]",))
    assert "unknown metric 'bogus'" in lines[0]


def test_head_on_non_head_component(tmp_path: Path) -> None:
    lines = problems(write(tmp_path, GOOD.replace("    position: last", "    position: last\n    head: 1")))
    assert "`head` only applies to head_* components" in lines[0]


def test_window_mapping(tmp_path: Path) -> None:
    cfg = config.load(
        write(
            tmp_path, GOOD.replace("    position: last", "    position: last\n    window: {mlp_output: 10}")
        )
    )
    assert cfg.experiment.interventions[0].window == {"mlp_output": 10}
    lines = problems(
        write(
            tmp_path, GOOD.replace("    position: last", "    position: last\n    window: {mlp_outptu: 10}")
        )
    )
    assert "window key 'mlp_outptu' is not a component name" in lines[0]


def test_yaml_12_booleans_keep_on_as_a_key(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, GOOD.replace("    position: last", "    position: last\n    on: all")))
    assert cfg.experiment.interventions[0].on == "all"
    assert config.parse("a: yes\nb: true\non: off") == {"a": "yes", "b": True, "on": "off"}


def test_sever_takes_none_a_component_or_an_axis(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("    position: last\n", "    position: last\n    sever: mlp\n"))
    found = problems(path)
    assert len(found) == 1 and "exp.yaml:14  interventions[0].sever" in found[0]
    assert "'mlp'" in found[0] and "mlp_output, attention_output, none" in found[0]
    ok = config.load(path, ("interventions.0.sever=none",))
    assert ok.experiment.interventions[0].sever is None
    swept = config.load(path, ("sweep.cut=[mlp_output, none]", "interventions.0.sever=$cut"))
    assert swept.experiment.interventions[0].sever == "$cut"
    # the axis' values are checked as `sever` values, at the sweep's line
    bad = problems(write(tmp_path, GOOD), ("interventions.0.sever=$layer",))
    assert bad and all("sweep.layer[" in line and "bound to `sever`" in line for line in bad), bad
