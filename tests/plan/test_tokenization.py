"""Subject matching on token and word boundaries, from hand-written offsets (no tokenizer)."""

from __future__ import annotations

import re

import pytest

from ivx.plan.tokenization import PositionError, subject_span


def _words(text: str, split: dict[str, list[str]] | None = None) -> list[tuple[int, int]]:
    """Offsets of a whitespace tokenizer that splits the words in `split` into the given pieces."""
    out = []
    for m in re.finditer(r"\S+", text):
        pieces = (split or {}).get(m.group(), [m.group()])
        at = m.start()
        for piece in pieces:
            out.append((at, at + len(piece)))
            at += len(piece)
    return out


TEXT = "Parisian cafes are small, and Paris is the capital of"


@pytest.mark.parametrize("split", [None, {"Parisian": ["Paris", "ian"]}])
def test_subject_inside_a_longer_word_is_skipped(split: dict | None) -> None:
    offsets = _words(TEXT, split)
    (start, end), chars = subject_span(TEXT, offsets, "Paris", None)
    assert chars == (30, 35) and offsets[start] == (30, 35) and end == start + 1


def test_two_whole_word_matches_are_ambiguous_unless_an_occurrence_is_given() -> None:
    text = "Paris is big and Paris is the capital of"
    with pytest.raises(PositionError, match=r"occurs 2 times .*subject_occurrence: N` \(1\.\.2\)"):
        subject_span(text, _words(text), "Paris", None)
    assert subject_span(text, _words(text), "Paris", 2)[1] == (17, 22)
    assert subject_span(text, _words(text), "Paris", 1)[1] == (0, 5)
    with pytest.raises(PositionError, match="occurs 2 time"):
        subject_span(text, _words(text), "Paris", 3)


def test_a_single_occurrence_inside_a_longer_word_is_an_error() -> None:
    # issue #27: this was accepted silently (the token containing it); subjects match whole words
    text = "The Parisian cafes"
    with pytest.raises(PositionError, match="only part of a word .*'Parisian'.*subject_occurrence: 1"):
        subject_span(text, _words(text), "Paris", None)
    assert subject_span(text, _words(text), "Paris", 1) == ((1, 2), (4, 9))  # asked for explicitly


def test_a_single_whole_word_off_token_boundaries_still_covers_its_tokens() -> None:
    text = "In Paris, now"
    offsets = [(0, 2), (3, 9), (10, 13)]  # 'Paris,' is one token
    assert subject_span(text, offsets, "Paris", None) == ((1, 2), (3, 8))


def test_leading_space_offsets_count_as_a_token_start() -> None:
    text = "In Paris now"
    offsets = [(0, 2), (2, 8), (8, 12)]  # byte-level BPE without trimmed offsets: ' Paris' is one token
    assert subject_span(text, offsets, "Paris", None) == ((1, 2), (3, 8))
