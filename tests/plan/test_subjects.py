"""A subject found only inside a longer word is an error naming the record (issue #27), checked
with a byte-level BPE and a SentencePiece-style tokenizer through the config path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ivx.config import loader
from ivx.core.errors import ConfigError
from ivx.plan import tokenization
from tests.tokenizers import build_tokenizer

BASE = "In 1889, the Eiffel Tower was built in Paris."


def _config(tmp_path: Path, records: list[dict]) -> loader.LoadedConfig:
    data = tmp_path / "facts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    path = tmp_path / "e.yaml"
    path.write_text(
        "model: {name: m}\nprompts: {file: facts.jsonl}\n"
        "interventions:\n  - {kind: zero, component: block_output, layer: 0, position: subject}\n"
    )
    return loader.load(path)


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_partial_word_subject_names_file_line_subject_and_prompt(tmp_path: Path, style: str) -> None:
    tokenizer = build_tokenizer(style)
    good = {"base": BASE, "target": " France", "subject": "Eiffel Tower"}
    bad = {"base": BASE, "target": " France", "subject": "Eiffel Tow"}
    cfg = _config(tmp_path, [good, bad])
    with pytest.raises(ConfigError) as info:
        tokenization.for_config(cfg, tokenizer, cfg.records)
    [problem] = info.value.problems
    assert problem.file.endswith("facts.jsonl") and problem.line == 2 and problem.path == "subject"
    assert (
        "'Eiffel Tow'" in problem.message and BASE in problem.message and "'Eiffel Tower'" in problem.message
    )


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_whole_word_subject_spans_exactly_its_tokens(style: str) -> None:
    tokenizer = build_tokenizer(style)
    record = loader.PromptRecord(base=BASE, target=" France", subject="Eiffel Tower")
    [p] = tokenization.tokenize(tokenizer, [record])
    start, end = p.subject_span
    text = tokenizer.decode(list(p.base_ids[start:end]))
    assert text.strip() == "Eiffel Tower"
    assert "Eiffel" not in tokenizer.decode(list(p.base_ids[:start]))
