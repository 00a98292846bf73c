"""Sweeps over `last`, negative and list positions and negative layers are summarised, not crashed.

Regression: the trace summary did `int('last')` after computing every cell and marked the run
failed; `-1` was filed under `before_subject`; layer `-1` cells were missing from the tables.
The expected tables here are recomputed by hand from results.jsonl and the prompts' tokens.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from typer.testing import CliRunner

from ivx.cli.app import app

runner = CliRunner()
N_LAYERS = 4  # ivx-toy
CONFIG = """name: shapes
model: {name: ivx-toy}
prompts:
  - {base: "According to the map , Zormoxis is located in the city of", subject: Zormoxis, target: " Quajunar"}
  - {base: "According to the map , Kelfyrar is located in the city of", subject: Kelfyrar, target: " Gornfyra"}
corrupt: {kind: noise, samples: 2}
sweep:
  layer: [0, -1]
  position: [1, last, -1, [1, 4], subject]
interventions:
  - {kind: vanilla, component: block_output, layer: $layer, position: $position}
metrics: [indirect_effect]
output: {logits: last, plots: true}
"""


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_sweep_over_keyword_negative_and_list_positions_and_negative_layers(tmp_path: Path) -> None:
    path = tmp_path / "shapes.yaml"
    path.write_text(CONFIG)
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    run_dir = Path(result.output.strip().splitlines()[-1])
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "complete"
    assert (run_dir / "tensors.safetensors").is_file() and (run_dir / "plots" / "prompt0000.png").is_file()
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert len(summary["grid"]) == 10  # every (layer, position) value is its own grid point
    tokens = {p["prompt_index"]: p["tokens"] for p in summary["prompts"]}
    subject = {p["prompt_index"]: p["subject_span"] for p in summary["prompts"]}

    # by hand: a single-token value resolved per prompt, its ROME category; -1 is the last token
    def category(prompt: int, spec: object) -> str:
        length, (start, end) = len(tokens[prompt]), subject[prompt]
        if spec == "subject":
            spec = start if end - start == 1 else None
        if isinstance(spec, list) or spec is None:
            return json.dumps(spec) if spec is not None else "subject"
        pos = length - 1 if spec == "last" else spec + length if spec < 0 else spec
        return "last" if pos == length - 1 else "before_subject" if pos < start else "subject_first"

    per_fact: dict[tuple[str, int], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        layer = row["layer"] + N_LAYERS if row["layer"] < 0 else row["layer"]
        per_fact[(category(row["prompt_index"], row["position"]), layer)][row["prompt_index"]].append(
            row["indirect_effect"]
        )
    table = summary["trace"]["components"]["block_output"]["by_category"]
    assert set(table) == {"before_subject", "subject_first", "last", "[1, 4]"}
    for (cat, layer), facts in per_fact.items():
        expected = _mean([_mean(v) for v in facts.values()])
        assert abs(table[cat]["mean"][layer] - expected) < 1e-12, (cat, layer)
    assert table["last"]["n"] == [2, 0, 0, 2]  # layer -1 is layer 3, not dropped
    assert table["last"]["mean"][3] > 0.5 > table["last"]["mean"][0]  # restoring the last state late
    # the position × layer matrix: `last` and -1 are the same cell, the list is not a single position
    by_position = summary["trace"]["components"]["block_output"]["by_position"]["mean"]
    assert by_position[len(tokens[0]) - 1][3] == table["last"]["mean"][3]
    shown = runner.invoke(app, ["show", str(run_dir)])
    assert shown.exit_code == 0 and "[1, 4]" in shown.output and "before_subject" in shown.output
