"""Resolve position specs (`last`, `subject`, -1, ...) to token indices; ROME token categories.

Tokenization itself (BOS, subject spans, answer tokens) lives in `ivx.tokenization`; its names
are re-exported here for callers that import them from this module.
"""

from __future__ import annotations

from typing import Any

from ivx.plan.tokenization import PositionError, TokenizedPrompt, tokenize

__all__ = ["CATEGORIES", "PositionError", "TokenizedPrompt", "category", "resolve", "tokenize"]


def resolve(spec: Any, length: int, subject: tuple[int, int] | None) -> tuple[int, ...]:
    """Token indices for a position spec in a sequence of `length` tokens."""
    if isinstance(spec, list):
        out: list[int] = []
        for item in spec:
            for pos in resolve(item, length, subject):
                if pos not in out:
                    out.append(pos)
        return tuple(out)
    if isinstance(spec, int):
        pos = spec + length if spec < 0 else spec
        if not 0 <= pos < length:
            raise PositionError(f"position {spec} is outside the prompt ({length} tokens)")
        return (pos,)
    if spec == "last":
        return (length - 1,)
    if spec == "all":
        return tuple(range(length))
    if spec in ("subject", "subject_first", "subject_last"):
        if subject is None:
            raise PositionError(f"position {spec!r} needs a `subject` in the prompt record")
        start, end = subject
        if spec == "subject_first":
            return (start,)
        if spec == "subject_last":
            return (end - 1,)
        return tuple(range(start, end))
    raise PositionError(f"unknown position {spec!r}")


def category(pos: int, length: int, subject: tuple[int, int] | None, bos: bool = False) -> str:
    """ROME token category of a position: bos, subject_first/middle/last, first/further subsequent, last."""
    if bos and pos == 0:
        return "bos"
    if pos == length - 1:
        return "last"
    if subject is None:
        return "other"
    start, end = subject
    if pos < start:
        return "before_subject"
    if pos == start:
        return "subject_first"
    if pos == end - 1:
        return "subject_last"
    if pos < end:
        return "subject_middle"
    if pos == end:
        return "subsequent_first"
    return "subsequent_further"


CATEGORIES: tuple[str, ...] = (
    "bos",
    "before_subject",
    "subject_first",
    "subject_middle",
    "subject_last",
    "subsequent_first",
    "subsequent_further",
    "last",
)
