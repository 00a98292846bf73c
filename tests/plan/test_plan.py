"""Plan expansion and position resolution: pure, no model weights."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from ivx.config import loader as config
from ivx.config.inputs import PromptRecord
from ivx.core.errors import ConfigError
from ivx.plan import grid as plan
from ivx.plan.positions import category, resolve
from ivx.plan.tokenization import PositionError, TokenizedPrompt


@dataclass(frozen=True)
class FakeInfo:
    model_type: str = "gpt2"
    layout: str = "gpt2"
    n_layers: int = 4
    d_model: int = 8
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int = 2
    d_mlp: int = 32
    vocab_size: int = 50
    components: tuple[str, ...] = (
        "embedding",
        "block_output",
        "mlp_output",
        "attention_output",
        "head_attention_value_output",
        "head_key_output",
    )


def prompt(
    index: int, length: int, subject: tuple[int, int] | None = (1, 3), src: int | None = None
) -> TokenizedPrompt:
    return TokenizedPrompt(
        index=index,
        record=PromptRecord(base="x"),
        base_ids=tuple(range(length)),
        base_tokens=tuple(str(i) for i in range(length)),
        source_ids=tuple(range(src)) if src else None,
        subject_span=subject,
        source_subject_span=None,
        target_id=1,
        foil_id=None,
    )


def load(tmp_path: Path, body: str) -> config.LoadedConfig:
    path = tmp_path / "e.yaml"
    path.write_text("model: {name: m}\nprompts: [{base: x, target: ' y'}]\n" + textwrap.dedent(body))
    return config.load(path)


def test_resolve_positions() -> None:
    assert resolve("last", 5, None) == (4,)
    assert resolve(-2, 5, None) == (3,)
    assert resolve("all", 3, None) == (0, 1, 2)
    assert resolve("subject", 6, (1, 4)) == (1, 2, 3)
    assert resolve(["subject_first", "subject_last", "last"], 6, (1, 4)) == (1, 3, 5)
    with pytest.raises(PositionError, match="outside the prompt"):
        resolve(7, 5, None)
    with pytest.raises(PositionError, match="needs a `subject`"):
        resolve("subject", 5, None)


def test_categories() -> None:
    cats = [category(i, 8, (2, 5)) for i in range(8)]
    assert cats == [
        "before_subject",
        "before_subject",
        "subject_first",
        "subject_middle",
        "subject_last",
        "subsequent_first",
        "subsequent_further",
        "last",
    ]


def test_grid_expansion_all_layers_positions_and_rome_window(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        """
        sweep: {component: [block_output, mlp_output], layer: all, position: all}
        interventions:
          - {kind: vanilla, component: $component, layer: $layer, position: $position, window: {mlp_output: 3}}
        """,
    )
    p = plan.expand(cfg, FakeInfo(), [prompt(0, 5), prompt(1, 3)])
    assert len(p.cells) == 2 * 4 * 5 + 2 * 4 * 3
    by_point = {(c.prompt, *[v for _, v in c.point]): c for c in p.cells}
    assert [e.layer for e in by_point[(0, "block_output", 2, 1)].edits] == [2]
    # ROME window: [l - w//2, l + ceil(w/2)) clipped
    assert [e.layer for e in by_point[(0, "mlp_output", 0, 1)].edits] == [0, 1]
    assert [e.layer for e in by_point[(0, "mlp_output", 2, 1)].edits] == [1, 2, 3]
    assert [e.layer for e in by_point[(0, "mlp_output", 3, 1)].edits] == [2, 3]
    assert all(e.source == "base" for c in p.cells for e in c.edits)


def test_trace_section_applies_romes_window_where_none_is_set(tmp_path: Path) -> None:
    body = """
        sweep: {component: [block_output, mlp_output, attention_output], layer: all}
        interventions:
          - {kind: vanilla, component: $component, layer: $layer, position: 1}
        """
    info = FakeInfo(n_layers=24)
    # ROME's own window, written out: the default now scales with depth (issue #27, see
    # tests/plan/test_trace_window.py), and this test pins the window's mechanics
    rome = "trace: {window: {mlp_output: 10, attention_output: 10}}\n"
    with_trace = plan.expand(load(tmp_path, body + rome), info, [prompt(0, 5)])
    by_point = {tuple(v for _, v in c.point): c for c in with_trace.cells}
    # ROME: a window of 10 layers centred on the layer for MLP and attention, clipped at the ends
    assert [e.layer for e in by_point[("mlp_output", 12)].edits] == list(range(7, 17))
    assert [e.layer for e in by_point[("attention_output", 2)].edits] == list(range(0, 7))
    assert [e.layer for e in by_point[("mlp_output", 23)].edits] == list(range(18, 24))
    assert [e.layer for e in by_point[("block_output", 12)].edits] == [12]
    # without a trace section, or with an explicit window, nothing is widened
    plain = plan.expand(load(tmp_path, body), info, [prompt(0, 5)])
    assert all(len(c.edits) == 1 for c in plain.cells)
    narrow = plan.expand(load(tmp_path, body + "trace: {window: {}}\n"), info, [prompt(0, 5)])
    assert all(len(c.edits) == 1 for c in narrow.cells)
    explicit = body.replace("position: 1}", "position: 1, window: {mlp_output: 2}}") + "trace: {}\n"
    by_point = {
        tuple(v for _, v in c.point): c
        for c in plan.expand(load(tmp_path, explicit), info, [prompt(0, 5)]).cells
    }
    assert [e.layer for e in by_point[("mlp_output", 12)].edits] == [11, 12]
    assert [e.layer for e in by_point[("attention_output", 12)].edits] == [12]


def test_model_aware_problems_are_collected(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        """
        interventions:
          - {kind: vanilla, component: block_output, layer: 9, position: last}
          - {kind: zero, component: residual_mid, layer: 0}
          - {kind: zero, component: head_key_output, layer: 0, head: 3}
          - {kind: zero, component: block_output, layer: 0, position: 12}
        """,
    )
    with pytest.raises(ConfigError) as info:
        plan.expand(cfg, FakeInfo(), [prompt(0, 5)])
    lines = [pr.format() for pr in info.value.problems]
    assert (
        "e.yaml:5  interventions[0].layer  layer 9 is out of range: the model has 4 layers (0..3)" in lines[0]
    )
    assert "interventions[1].component  component 'residual_mid' does not exist in this model" in lines[1]
    assert "interventions[2].head  head 3 is out of range: head_key_output has 2 heads (0..1)" in lines[2]
    assert "interventions[3].position  prompt 0: position 12 is outside the prompt (5 tokens)" in lines[3]


def test_source_length_mismatch_needs_source_position(tmp_path: Path) -> None:
    cfg = load(
        tmp_path, "interventions: [{kind: vanilla, component: block_output, layer: 1, position: last}]\n"
    )
    with pytest.raises(ConfigError, match="set `source_position`"):
        plan.expand(cfg, FakeInfo(), [prompt(0, 5, src=6)])
    cfg = load(
        tmp_path,
        "interventions: [{kind: vanilla, component: block_output, layer: 1, position: last, source_position: -1}]\n",
    )
    (cell,) = plan.expand(cfg, FakeInfo(), [prompt(0, 5, src=6)]).cells
    assert cell.edits[0].source == "source" and cell.edits[0].source_positions == (5,)


def test_negative_layers_and_heads_default_to_all(tmp_path: Path) -> None:
    cfg = load(tmp_path, "interventions: [{kind: zero, component: head_attention_value_output, layer: -1}]\n")
    (cell,) = plan.expand(cfg, FakeInfo(), [prompt(0, 4)]).cells
    assert cell.edits[0].layer == 3 and cell.edits[0].heads == (0, 1, 2, 3)


def test_position_labels_mark_tokens_that_vary() -> None:
    from dataclasses import replace

    from ivx.results.tracing import position_labels

    a = prompt(0, 4)
    b = replace(prompt(1, 4), base_ids=(0, 1, 9, 3))
    assert position_labels([a, b]) == ["0", "1", "(2)", "3"]
    assert position_labels([a]) == ["0", "1", "2", "3"]
