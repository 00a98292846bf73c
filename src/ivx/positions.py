"""Tokenize prompt records and resolve position specs (`last`, `subject`, -1, ...) to token indices."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ivx.schema import PromptRecord


class PositionError(ValueError):
    """A position spec that does not fit a prompt (past its end, no subject, ...)."""


@dataclass(frozen=True)
class TokenizedPrompt:
    """A prompt record with its token ids and the token span of its subject."""

    index: int
    record: PromptRecord
    base_ids: tuple[int, ...]
    base_tokens: tuple[str, ...]
    source_ids: tuple[int, ...] | None
    subject_span: tuple[int, int] | None  # [start, end) token indices in base
    source_subject_span: tuple[int, int] | None
    target_id: int | None
    foil_id: int | None

    @property
    def length(self) -> int:
        """Number of base tokens."""
        return len(self.base_ids)


def _span(tokenizer: Any, text: str, subject: str) -> tuple[tuple[int, ...], tuple[int, int] | None]:
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    ids = tuple(enc["input_ids"])
    start = text.find(subject)
    end = start + len(subject)
    toks = [
        i
        for i, (a, b) in enumerate(enc["offset_mapping"])
        if b > a and a < end and b > start and text[a:b].strip()
    ]
    return ids, (toks[0], toks[-1] + 1) if toks else None


def first_token(tokenizer: Any, answer: str) -> int:
    """Id of the first token of an answer string (e.g. ' Seattle')."""
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if not ids:
        raise PositionError(f"answer {answer!r} tokenizes to nothing")
    return int(ids[0])


def tokenize(tokenizer: Any, records: list[PromptRecord]) -> list[TokenizedPrompt]:
    """Tokenize every record (no special tokens added) and locate subjects."""
    out: list[TokenizedPrompt] = []
    for index, record in enumerate(records):
        span = src_span = None
        if record.subject is not None:
            base_ids, span = _span(tokenizer, record.base, record.subject)
        else:
            base_ids = tuple(tokenizer(record.base, add_special_tokens=False)["input_ids"])
        source_ids = None
        if record.source is not None:
            if record.subject is not None and record.subject in record.source:
                source_ids, src_span = _span(tokenizer, record.source, record.subject)
            else:
                source_ids = tuple(tokenizer(record.source, add_special_tokens=False)["input_ids"])
        tokens = tuple(tokenizer.convert_ids_to_tokens(list(base_ids)))
        out.append(
            TokenizedPrompt(
                index=index,
                record=record,
                base_ids=base_ids,
                base_tokens=tuple(str(t) for t in tokens),
                source_ids=source_ids,
                subject_span=span,
                source_subject_span=src_span,
                target_id=first_token(tokenizer, record.target) if record.target else None,
                foil_id=first_token(tokenizer, record.foil) if record.foil else None,
            )
        )
    return out


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


def category(pos: int, length: int, subject: tuple[int, int] | None) -> str:
    """ROME token category of a position: subject_first/middle/last, first/further subsequent, last."""
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
    "before_subject",
    "subject_first",
    "subject_middle",
    "subject_last",
    "subsequent_first",
    "subsequent_further",
    "last",
)
