"""Prompt sources: JSONL files, JSON arrays (ROME's known_1000.json, CounterFact) and `datasets`.

Every reader yields raw rows one at a time, so `limit` stops reading early (a 200 MB file is
not read whole); a layout function then maps a row onto ivx's record fields, and `record`
validates it, reporting what is wrong at the row's line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ivx.config.inputs import PromptFile, PromptRecord
from ivx.core.errors import Problem, UserError, dotted

CHUNK = 1 << 16
TOO_LONG = "a number too long to read (over 4,300 digits)"


class SourceError(UserError, ValueError):
    """A prompt source that cannot be read (missing file or library, bad dataset)."""


@dataclass(frozen=True)
class Row:
    """One raw row and where it came from (a line for JSONL, else None with a label)."""

    where: str
    line: int | None
    data: Any


def _jsonl(path: Path) -> Iterator[Row]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    yield Row(str(path), number, json.loads(line))
                except (ValueError, RecursionError) as exc:  # ValueError: bad JSON, or a huge integer
                    yield Row(str(path), number, exc)


def _json_array(path: Path) -> Iterator[Row]:
    """Items of a top-level JSON array, decoded incrementally (a chunk at a time)."""
    decoder = json.JSONDecoder()
    with path.open(encoding="utf-8") as handle:
        buf = handle.read(CHUNK).lstrip()
        if not buf.startswith("["):
            raise SourceError(f"{path}: expected a JSON array of records")
        at, index, eof = 1, 0, False
        while True:
            while at < len(buf) and buf[at] in " \t\r\n,":
                at += 1
            if at < len(buf) and buf[at] == "]":
                return
            try:
                item, end = decoder.raw_decode(buf, at)
            except RecursionError:
                raise SourceError(f"{path}: invalid JSON in record {index}: nested too deeply") from None
            except json.JSONDecodeError as exc:
                if eof:
                    raise SourceError(f"{path}: invalid JSON in record {index}: {exc.msg}") from None
                more = handle.read(CHUNK)
                eof = not more
                buf, at = buf[at:] + more, 0
                continue
            except ValueError:  # an integer beyond Python's str→int limit
                raise SourceError(f"{path}: invalid JSON in record {index}: {TOO_LONG}") from None
            yield Row(f"{path} record {index}", None, item)
            index += 1
            at = end


def _dataset(spec: PromptFile, dataset: str, base_dir: Path) -> Iterator[Row]:
    try:
        import datasets
    except ImportError:
        raise SourceError(
            "prompts.dataset needs the `datasets` library: pip install 'ivx-interventions[datasets]'"
        ) from None
    local = base_dir / dataset if not Path(dataset).is_absolute() else Path(dataset)
    datasets.utils.logging.disable_progress_bar()
    try:
        if (local / "dataset_info.json").is_file() or (local / "dataset_dict.json").is_file():
            data = datasets.load_from_disk(str(local))
            if isinstance(data, datasets.DatasetDict):
                if spec.split not in data:
                    raise SourceError(f"split {spec.split!r} not in {sorted(data)}")
                data = data[spec.split]
        else:
            name = str(local) if local.exists() else str(spec.dataset)
            data = datasets.load_dataset(name, split=spec.split, streaming=True)
    except SourceError:
        raise
    except Exception as exc:  # noqa: BLE001 - datasets raises many kinds; report them as one line
        raise SourceError(f"cannot load dataset {spec.dataset!r}: {type(exc).__name__}: {exc}") from None
    for index, item in enumerate(data):
        yield Row(f"{spec.dataset} row {index}", None, item)


def _get(row: dict[str, Any], dotted: str) -> Any:
    value: Any = row
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(dotted)
        value = value[part]
    return value


def _space(answer: Any) -> str:
    """ROME's answers come without their leading space; the model predicts ' Paris', not 'Paris'."""
    text = str(answer)
    return text if text.startswith(" ") else " " + text


def layout(row: dict[str, Any], fmt: str) -> str:
    """The layout of a row: counterfact, known_1000 or records (for `format: auto`)."""
    if fmt != "auto":
        return fmt
    if "requested_rewrite" in row:
        return "counterfact"
    if {"prompt", "subject", "attribute"} <= set(row):
        return "known_1000"
    return "records"


def to_record(row: dict[str, Any], spec: PromptFile) -> dict[str, Any]:
    """Map a raw row onto record fields (columns first, then the layout's own mapping)."""
    if spec.columns:
        return {field: _get(row, column) for field, column in spec.columns.items()}
    kind = layout(row, spec.format)
    if kind == "known_1000":
        return {"base": row["prompt"], "subject": row["subject"], "target": _space(row["attribute"])}
    if kind == "counterfact":
        rw = row["requested_rewrite"]
        return {
            "base": rw["prompt"].replace("{}", rw["subject"]),
            "subject": rw["subject"],
            "target": _space(rw["target_true"]["str"]),
            "foil": _space(rw["target_new"]["str"]),
        }
    return row


def rows(spec: PromptFile, base_dir: Path) -> Iterator[Row]:
    """Raw rows of the source, unmapped (JSON decode errors come through as exceptions in data)."""
    if spec.dataset is not None:
        yield from _dataset(spec, spec.dataset, base_dir)
        return
    path = (base_dir / str(spec.file)).resolve()
    if not path.is_file():
        raise SourceError(f"prompt file {spec.file!r} not found (looked at {path})")
    with path.open(encoding="utf-8") as handle:
        head = handle.read(CHUNK).lstrip()
    yield from (_json_array(path) if head.startswith("[") else _jsonl(path))


def record(row: Row, spec: PromptFile, problems: list[Problem]) -> PromptRecord | None:
    """Validate one raw row as a record; append its problems (located at the row)."""

    if isinstance(row.data, ValueError | RecursionError):
        why = (
            row.data.msg
            if isinstance(row.data, json.JSONDecodeError)
            else TOO_LONG
            if isinstance(row.data, ValueError)
            else "nested too deeply"
        )
        problems.append(Problem(row.where, row.line, "", f"invalid JSON: {why}"))
        return None
    if not isinstance(row.data, dict):
        got = json.dumps(row.data) if _shallow(row.data) else type(row.data).__name__
        got = got if len(got) <= 60 else got[:60] + f"… ({len(got):,} characters)"
        problems.append(Problem(row.where, row.line, "", f"a record must be a JSON object, got {got}"))
        return None
    try:
        return PromptRecord.model_validate(to_record(row.data, spec))
    except KeyError as exc:
        problems.append(
            Problem(row.where, row.line, "", f"column {exc.args[0]!r} is missing; has {sorted(row.data)}")
        )
    except ValidationError as exc:
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = f"unknown key {err['loc'][-1]!r}; allowed: {', '.join(PromptRecord.model_fields)}"
            problems.append(Problem(row.where, row.line, dotted(tuple(err["loc"])), msg))
    return None


def _shallow(value: Any) -> bool:
    """Whether a JSON value is small enough to quote in a message."""
    return not isinstance(value, list) or all(
        isinstance(v, str | int | float | bool) or v is None for v in value
    )
