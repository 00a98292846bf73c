"""Tokenization, the one place ivx turns text into token ids.

- Prompts get a BOS token when the model's tokenizer adds one by default (`model.bos: auto`;
  Llama/Mistral/Gemma do, GPT-2/Pythia do not), or as forced by `model.bos: true | false`.
- Subjects are matched on token (and word) boundaries: `Paris` in `Parisian … Paris` is the
  second occurrence; two equally good matches are an error unless the record says which.
- Answers are the tokens that follow the prompt when `base + answer` is tokenized, so a
  leading-space answer is scored as the token the model would actually produce next (never a
  bare `'▁'` that only appears when the answer is tokenized on its own).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ivx.config import loader as config_mod
from ivx.config.inputs import PromptRecord
from ivx.core import metrics
from ivx.core.errors import ConfigError, UserError


class PositionError(UserError, ValueError):
    """A position spec that does not fit a prompt (past its end, no subject, ...)."""


class TokenizationError(PositionError):
    """Problems found while tokenizing prompt records: (record index, field, message) each."""

    def __init__(self, problems: list[tuple[int, str, str]]) -> None:
        super().__init__("; ".join(f"prompt {i}: {m}" for i, _, m in problems))
        self.problems = problems


@dataclass(frozen=True)
class TokenizedPrompt:
    """A prompt record with its token ids, the token span of its subject and its answer tokens."""

    index: int
    record: PromptRecord
    base_ids: tuple[int, ...]
    base_tokens: tuple[str, ...]
    source_ids: tuple[int, ...] | None
    subject_span: tuple[int, int] | None  # [start, end) token indices in base (BOS included)
    source_subject_span: tuple[int, int] | None
    target_id: int | None = None  # the scored target token: the first of target_ids
    foil_id: int | None = None
    target_ids: tuple[int, ...] | None = None  # the tokens that follow base in base + target
    foil_ids: tuple[int, ...] | None = None
    target_tokens: tuple[str, ...] | None = None
    foil_tokens: tuple[str, ...] | None = None
    bos: bool = False  # base_ids[0] (and source_ids[0]) is the BOS token
    subject_chars: tuple[int, int] | None = None  # [start, end) characters of the subject in base

    @property
    def length(self) -> int:
        """Number of base tokens."""
        return len(self.base_ids)

    def __post_init__(self) -> None:
        for name in ("target", "foil"):
            one, many = getattr(self, f"{name}_id"), getattr(self, f"{name}_ids")
            if one is None and many:
                object.__setattr__(self, f"{name}_id", many[0])
            elif many is None and one is not None:
                object.__setattr__(self, f"{name}_ids", (one,))


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts a BOS token first by default (`add_special_tokens=True`)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    return bool(with_special) and with_special[0] == bos and plain[:1] != [bos]


def use_bos(tokenizer: Any, setting: bool | str) -> bool:
    """Resolve `model.bos` (auto | true | false) for this tokenizer."""
    if setting == "auto":
        return adds_bos(tokenizer)
    if setting and tokenizer.bos_token_id is None:
        raise PositionError("model.bos is true but the tokenizer has no BOS token (bos_token is unset)")
    return bool(setting)


def encode(tokenizer: Any, text: str, bos: bool) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of `text`, with BOS first when `bos` (offsets (0, 0))."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    if bos:
        return [tokenizer.bos_token_id, *ids], [(0, 0), *offsets]
    return ids, offsets


def ids(tokenizer: Any, text: str, bos: bool) -> list[int]:
    """Token ids of `text` the way ivx feeds prompts to the model."""
    return encode(tokenizer, text, bos)[0]


def answer_ids(tokenizer: Any, base: str, answer: str) -> tuple[int, ...]:
    """The tokens that follow `base` when `base + answer` is tokenized (BOS plays no part)."""
    base_ids = ids(tokenizer, base, False)
    full, offsets = encode(tokenizer, base + answer, False)
    k = sum(1 for _, end in offsets if end <= len(base))
    if full[:k] != base_ids:
        raise PositionError(
            f"answer {answer!r} merges with the end of the prompt when appended to it (the prompt's own "
            "tokens change); end the prompt on a word and start the answer with its space, e.g. ' Paris'"
        )
    if k == len(full):
        raise PositionError(f"answer {answer!r} tokenizes to nothing after the prompt")
    return tuple(full[k:])


def _word_edge(text: str, at: int, inside: str) -> bool:
    """No word continues across `at` (only checked where the subject itself has a word char)."""
    return not (inside.isalnum() and 0 <= at < len(text) and text[at].isalnum())


def subject_span(
    text: str, offsets: list[tuple[int, int]], subject: str, occurrence: int | None
) -> tuple[tuple[int, int], tuple[int, int]]:
    """([start, end) tokens, [start, end) chars) of the subject, matched on token boundaries."""
    starts = [i for i in range(len(text)) if text.startswith(subject, i)]
    if not starts:
        raise PositionError(f"subject {subject!r} does not occur in {text!r}")
    if occurrence is not None:
        if occurrence > len(starts):
            raise PositionError(
                f"subject_occurrence {occurrence} but {subject!r} occurs {len(starts)} time(s)"
            )
        chosen = [starts[occurrence - 1]]
    else:
        aligned = [s for s in starts if _aligned(text, offsets, s, s + len(subject), subject)]
        words = [s for s in starts if _on_words(text, s, s + len(subject), subject)]
        if len(starts) == 1 and not words:
            raise PositionError(_part_of_word(text, starts[0], subject))
        chosen = (aligned or starts[:1]) if len(starts) == 1 else aligned
        if not chosen:
            raise PositionError(
                f"subject {subject!r} occurs {len(starts)} times in {text!r} but never on token and word "
                "boundaries; set `subject_occurrence: N` (1 = first) in the record"
            )
        if len(chosen) > 1:
            at = ", ".join(str(s) for s in chosen)
            raise PositionError(
                f"subject {subject!r} occurs {len(chosen)} times in {text!r} (characters {at}); say which "
                f"with `subject_occurrence: N` (1..{len(starts)}) in the record"
            )
    start = chosen[0]
    end = start + len(subject)
    toks = [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start and text[a:b].strip()]
    if not toks:
        raise PositionError(f"subject {subject!r} covers no token of {text!r}")
    return (toks[0], toks[-1] + 1), (start, end)


def _on_words(text: str, start: int, end: int, subject: str) -> bool:
    """No word of `text` continues across either end of the subject at [start, end)."""
    return _word_edge(text, start - 1, subject[0]) and _word_edge(text, end, subject[-1])


def _part_of_word(text: str, start: int, subject: str) -> str:
    """The problem of a subject found only inside a longer word."""
    end = start + len(subject)
    lo = start
    while lo > 0 and text[lo - 1].isalnum():
        lo -= 1
    hi = end
    while hi < len(text) and text[hi].isalnum():
        hi += 1
    return (
        f"subject {subject!r} matches only part of a word in {text!r} (the words there: {text[lo:hi]!r}); "
        "subjects match whole words: give the whole word, or set `subject_occurrence: 1` to use this match"
    )


def _aligned(text: str, offsets: list[tuple[int, int]], start: int, end: int, subject: str) -> bool:
    """The subject starts at a token start and ends at a token end, on word boundaries."""
    if not _on_words(text, start, end, subject):
        return False
    begins = any(a <= start < b and not text[a:start].strip() for a, b in offsets)
    ends = any(b == end for a, b in offsets if b > a)
    return begins and ends


def _answer(
    tokenizer: Any, base: str, answer: str | None
) -> tuple[tuple[int, ...] | None, tuple[str, ...] | None]:
    if answer is None:
        return None, None
    found = answer_ids(tokenizer, base, answer)
    return found, tuple(str(t) for t in tokenizer.convert_ids_to_tokens(list(found)))


def tokenize_one(tokenizer: Any, index: int, record: PromptRecord, bos: bool) -> TokenizedPrompt:
    """Tokenize one record; raise TokenizationError naming the field that is wrong."""
    field = "base"
    try:
        base_ids, offsets = encode(tokenizer, record.base, bos)
        span = chars = src_span = source_ids = None
        if record.subject is not None:
            field = "subject"
            span, chars = subject_span(record.base, offsets, record.subject, record.subject_occurrence)
        if record.source is not None:
            field = "source"
            source_ids, src_offsets = encode(tokenizer, record.source, bos)
            if record.subject is not None and record.subject in record.source:
                try:
                    src_span = subject_span(
                        record.source, src_offsets, record.subject, record.subject_occurrence
                    )[0]
                except PositionError:
                    src_span = (
                        None  # the source's own subject may differ: only `subject*` source positions need it
                    )
        field = "target"
        target_ids, target_tokens = _answer(tokenizer, record.base, record.target)
        field = "foil"
        foil_ids, foil_tokens = _answer(tokenizer, record.base, record.foil)
    except PositionError as exc:
        raise TokenizationError([(index, field, str(exc))]) from None
    return TokenizedPrompt(
        index=index,
        record=record,
        base_ids=tuple(base_ids),
        base_tokens=tuple(str(t) for t in tokenizer.convert_ids_to_tokens(base_ids)),
        source_ids=tuple(source_ids) if source_ids is not None else None,
        subject_span=span,
        source_subject_span=src_span,
        target_ids=target_ids,
        foil_ids=foil_ids,
        target_tokens=target_tokens,
        foil_tokens=foil_tokens,
        bos=bos,
        subject_chars=chars,
    )


def tokenize(tokenizer: Any, records: list[PromptRecord], bos: bool | str = False) -> list[TokenizedPrompt]:
    """Tokenize every record (BOS per `bos`: true, false or auto); all problems at once."""
    first = use_bos(tokenizer, bos)
    out: list[TokenizedPrompt] = []
    problems: list[tuple[int, str, str]] = []
    for index, record in enumerate(records):
        try:
            out.append(tokenize_one(tokenizer, index, record, first))
        except TokenizationError as exc:
            problems.extend(exc.problems)
    if problems:
        raise TokenizationError(problems)
    return out


def identical_answers(prompts: list[TokenizedPrompt]) -> list[TokenizedPrompt]:
    """Prompts whose scored target and foil are the same token (a logit difference is then 0)."""
    return [p for p in prompts if p.target_id is not None and p.target_id == p.foil_id]


def replacements(tokenizer: Any, prompts: list[TokenizedPrompt], seed: int) -> dict[int, tuple[int, ...]]:
    """Symmetric token replacement at the word level: each prompt's subject text is swapped for
    another record's subject and the prompt re-tokenized (so every token keeps its leading-space
    form); only swaps that keep the prompt's token length qualify."""
    import random

    rng = random.Random(seed)
    with_subject = [p for p in prompts if p.subject_chars is not None]
    out: dict[int, tuple[int, ...]] = {}
    problems: list[tuple[int, str, str]] = []
    for p in prompts:
        if p.subject_chars is None:
            problems.append((p.index, "subject", "symmetric token replacement needs a `subject`"))
            continue
        options: list[tuple[int, ...]] = []
        for q in with_subject:
            if q.record.subject == p.record.subject:
                continue
            start, end = p.subject_chars
            text = p.record.base[:start] + str(q.record.subject) + p.record.base[end:]
            swapped = tuple(ids(tokenizer, text, p.bos))
            if len(swapped) == p.length:
                options.append(swapped)
        if not options:
            problems.append(
                (
                    p.index,
                    "subject",
                    f"no other subject keeps the prompt at {p.length} tokens when swapped in",
                )
            )
            continue
        out[p.index] = rng.choice(options)
    if problems:
        raise TokenizationError(problems)
    return out


def for_config(cfg: Any, tokenizer: Any, records: list | None = None) -> list[TokenizedPrompt]:
    """Tokenize the config's records (BOS per `model.bos`); ConfigError locating every problem,
    including scored target and foil tokens that are identical under a logit-difference metric."""

    try:
        bos = use_bos(tokenizer, cfg.experiment.model.bos)
        prompts = tokenize(tokenizer, cfg.records if records is None else records, bos)
    except TokenizationError as exc:
        problems = [config_mod.record_problem(cfg, i, field, msg) for i, field, msg in exc.problems]
        raise ConfigError(problems[:50]) from None
    except PositionError as exc:
        raise ConfigError([cfg.problem(("model", "bos"), str(exc))]) from None
    if metrics.needing("foil", cfg.experiment.metrics):
        same = identical_answers(prompts)
        if same:
            raise ConfigError(
                [
                    config_mod.record_problem(
                        cfg,
                        p.index,
                        "foil",
                        f"target {p.record.target!r} and foil {p.record.foil!r} are scored as the same token "
                        f"{(p.target_tokens[0] if p.target_tokens else None)!r} (id {p.target_id}), so "
                        "logit_diff would be 0; choose "
                        "answers whose first tokens differ",
                    )
                    for p in same[:50]
                ]
            )
    return prompts
