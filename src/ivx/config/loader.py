"""Load an experiment YAML file into a validated `Experiment`, reporting every problem at once.

Each problem carries the file, the line of the offending YAML node and the dotted path of the
field, so the CLI can print `file:line  dotted.path  message` lines. Library callers get the
structured `ConfigError.problems`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ivx.config import fields, sae_fields, sources, sweep_checks
from ivx.config import sweep as sweeps
from ivx.config.inputs import PromptFile, PromptRecord
from ivx.config.problems import from_validation
from ivx.config.schema import Experiment, Intervention
from ivx.core.errors import ConfigError, Problem, dotted


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false (so `on: prompt` keeps its key, `yes`/`no` stay text)."""


_Loader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


MAX_KEY = 200  # characters of a `--set` key path
MAX_INT_DIGITS = 100  # far beyond any count, index or seed; Python refuses str↔int past 4,300 digits


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
    """YAML integers, refusing absurdly long ones as a YAML problem at their line."""
    digits = sum(
        c.isalnum() for c in str(node.value).removeprefix("0x").removeprefix("0b").removeprefix("0o")
    )
    if digits > MAX_INT_DIGITS:
        raise yaml.constructor.ConstructorError(
            None,
            None,
            f"an integer of {digits:,} digits is out of range (at most {MAX_INT_DIGITS})",
            node.start_mark,
        )
    try:
        return loader.construct_yaml_int(node)
    except (ValueError, IndexError) as exc:  # e.g. an empty `!!int`
        raise yaml.constructor.ConstructorError(
            None, None, f"{str(node.value)!r} is not an integer ({exc})", node.start_mark
        ) from None


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def parse(text: str) -> Any:
    """Parse YAML text with ivx's loader; a value a tag cannot construct is a YAML error."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except (ValueError, IndexError, TypeError, OverflowError, AttributeError) as exc:  # `!!float ""`
        raise yaml.YAMLError(f"a tagged value cannot be read: {exc}") from None


@dataclass
class LoadedConfig:
    """A validated experiment plus what is needed to report later problems against the file."""

    experiment: Experiment
    path: Path
    raw: dict[str, Any]
    text: str
    lines: dict[tuple, int] = field(default_factory=dict)
    records: list[PromptRecord] = field(default_factory=list)
    records_file: Path | None = None
    # per record: (file, line, dotted path when inline in the config else "")
    record_origins: list[tuple[str, int | None, str]] = field(default_factory=list)

    def line_of(self, path: tuple) -> int | None:
        """Line of the YAML node at `path`, or of its closest ancestor."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), None)

    def problem(self, path: tuple, message: str) -> Problem:
        """A `Problem` located at the YAML node `path`."""
        return Problem(str(self.path), self.line_of(path), dotted(path), message)


MAX_BYTES = 4 * 2**20  # an experiment file is a few KB; prompts belong in a prompts file
MAX_NODES = 100_000  # YAML values after alias expansion


class _TooLarge(Exception):
    pass


def _read(path: Path) -> str:
    """The config's text, or one clear problem (missing, unreadable, binary, huge)."""
    if not path.is_file():
        raise ConfigError([Problem(str(path), None, "", "config file not found")])
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError([Problem(str(path), None, "", f"cannot read: {exc.strerror}")]) from None
    if len(data) > MAX_BYTES:
        raise ConfigError([Problem(str(path), None, "", f"{len(data):,} bytes is too large for a config")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [Problem(str(path), None, "", f"not a UTF-8 text file (byte {exc.start}); is this a config?")]
        ) from None
    if "\x00" in text:
        raise ConfigError([Problem(str(path), None, "", "binary data (NUL bytes); is this a config?")])
    return text


def _line_map(node: yaml.Node, path: tuple, lines: dict[tuple, int], dupes: list) -> None:
    if len(lines) > MAX_NODES:
        raise _TooLarge
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                dupes.append((path + (key,), key_node.start_mark.line + 1))
            seen.add(key)
            lines[path + (key,)] = key_node.start_mark.line + 1
            _line_map(value_node, path + (key,), lines, dupes)
            lines[path + (key,)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_map(item, path + (i,), lines, dupes)


def _index(part: str) -> str | int:
    """A `--set` key part: a list index when it is a (reasonably sized) integer, else a key."""
    return int(part) if re.fullmatch(rf"-?[0-9]{{1,{MAX_INT_DIGITS}}}", part) else part


def _short(text: str, limit: int = 60) -> str:
    """`text` quoted, shortened for a one-line message."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"… ({len(text):,} characters)"


def _apply_override(raw: dict, assignment: str) -> tuple[tuple, str | None]:
    """Apply one `--set a.b.c=value` (value parsed as YAML); return the path and any error."""
    if "=" not in assignment:
        return (), f"--set {assignment!r} must look like key.path=value"
    key, _, text = assignment.partition("=")
    if len(key) > MAX_KEY:
        return (
            (),
            f"--set {_short(key)}: a key path of {len(key):,} characters is too long (at most {MAX_KEY})",
        )
    parts: list[str | int] = [_index(p) for p in key.split(".")]
    try:
        value = parse(text) if text else ""
    except yaml.YAMLError as exc:
        return tuple(parts), f"--set value {_short(text)} is not valid YAML: {' '.join(str(exc).split())}"
    except RecursionError:
        return tuple(parts), f"--set value {_short(text)} is not valid YAML: nested too deeply"
    node: Any = raw
    for part in parts[:-1]:
        if isinstance(node, dict):
            node = node.setdefault(part, {})
        elif isinstance(node, list) and isinstance(part, int) and -len(node) <= part < len(node):
            node = node[part]
        else:
            return tuple(parts), f"--set {key}: cannot descend into {part!r}"
    last = parts[-1]
    if isinstance(node, dict):
        node[last] = value
    elif isinstance(node, list) and isinstance(last, int) and -len(node) <= last < len(node):
        node[last] = value
    else:
        return tuple(parts), f"--set {key}: cannot set {last!r}"
    return tuple(parts), None


def _raw_checks(cfg: LoadedConfig) -> list[Problem]:
    """Checks that read the raw YAML (so they run even when the schema failed): `$axis`
    references, sweep values against the field they bind to, fields the kind ignores."""
    known = frozenset(Intervention.model_fields)
    found = fields.sweep_value_problems(cfg.raw) + fields.kind_field_problems(cfg.raw, known)
    found += fields.bundle_problems(cfg.raw) + sae_fields.problems(cfg.raw)
    return sweep_checks.refs(cfg.raw, cfg.problem) + [cfg.problem(path, message) for path, message in found]


def _load_records(cfg: LoadedConfig) -> list[Problem]:

    spec = cfg.experiment.prompts
    if isinstance(spec, list):
        cfg.records = list(spec)
        cfg.record_origins = [
            (str(cfg.path), cfg.line_of(("prompts", i)), f"prompts[{i}]") for i in range(len(spec))
        ]
        return []
    assert isinstance(spec, PromptFile)
    key = "file" if spec.file is not None else "dataset"
    if spec.file is not None:
        cfg.records_file = (cfg.path.parent / spec.file).resolve()
    problems: list[Problem] = []
    records: list[PromptRecord] = []
    try:
        for row in sources.rows(spec, cfg.path.parent):
            if spec.limit is not None and len(records) >= spec.limit:
                break
            record = sources.record(row, spec, problems)
            if record is not None:
                records.append(record)
                cfg.record_origins.append((row.where, row.line, ""))
            if len(problems) > 20:
                break
    except sources.SourceError as exc:
        return [cfg.problem(("prompts", key), str(exc))]
    except (OSError, UnicodeDecodeError) as exc:
        return [
            cfg.problem(("prompts", key), f"prompt {key} {getattr(spec, key)!r} is not UTF-8 text ({exc})")
        ]
    if not records and not problems:
        problems.append(cfg.problem(("prompts", key), f"prompt {key} {getattr(spec, key)!r} has no records"))
    cfg.records = records
    return problems


def record_problem(cfg: LoadedConfig, index: int, field: str, message: str) -> Problem:
    """A problem located at prompt record `index` (its YAML node, file line or dataset row)."""
    if index < len(cfg.record_origins):
        file, line, path = cfg.record_origins[index]
        if path:  # inline in the config
            return cfg.problem(("prompts", index, field), message)
        return Problem(file, line, field, message)
    return cfg.problem(("prompts",), f"prompt {index}: {message}")


def at_sweep_value(cfg: LoadedConfig, index: int, point: dict[str, Any], problem: Problem) -> Problem:
    """Move a problem of intervention `index`'s field to the sweep value it was bound to (the
    value is what is wrong, not the `$axis` line)."""
    return sweep_checks.at_value(cfg.raw, index, point, problem, cfg.problem)


def corruption_problems(cfg: LoadedConfig) -> list[Problem]:
    """What the corruption reads from the records must be there (checked before any run)."""
    corrupt = cfg.experiment.corrupt
    problems: list[Problem] = []
    for i, single in enumerate(corrupt if isinstance(corrupt, list) else [corrupt] if corrupt else []):
        loc: tuple = ("corrupt", i, "sigma") if isinstance(corrupt, list) else ("corrupt", "sigma")
        subjects = any(r.subject for r in cfg.records)
        if single.kind == "noise" and single.sigma == "subjects" and cfg.records and not subjects:
            problems.append(
                cfg.problem(
                    loc,
                    "sigma 'subjects' (the default) is the std of the subjects' token embeddings, but no "
                    "record has a `subject`: add subjects, or set sigma: embeddings or a number",
                )
            )
    return problems


def load(
    path: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    checks: Sequence[Callable[[LoadedConfig], list[Problem]]] = (),
) -> LoadedConfig:
    """Read, override and validate an experiment file; raise ConfigError with all problems.

    `checks` add the problems of the layers above (a method's own config rules), reported together
    with the schema's; `ivx.recipes.prepare` passes them.
    """
    path = Path(path)
    text = _read(path)
    try:
        node = yaml.compose(text, Loader=_Loader)
        raw = parse(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        message = " ".join(str(exc).split())
        raise ConfigError([Problem(str(path), line, "", f"invalid YAML: {message}")]) from None
    except RecursionError:
        raise ConfigError([Problem(str(path), None, "", "invalid YAML: nested too deeply")]) from None
    if not isinstance(raw, dict):
        raise ConfigError([Problem(str(path), 1, "", "the config must be a YAML mapping")])
    lines: dict[tuple, int] = {}
    dupes: list = []
    if node is not None:
        try:
            _line_map(node, (), lines, dupes)
        except _TooLarge:
            raise ConfigError(
                [Problem(str(path), None, "", f"the config expands to over {MAX_NODES:,} values (aliases?)")]
            ) from None
    cfg = LoadedConfig(experiment=None, path=path, raw=raw, text=text, lines=lines)  # type: ignore[arg-type]
    problems = [cfg.problem(p, f"duplicate key {p[-1]!r}") for p, _ in dupes]
    for assignment in overrides:
        where, error = _apply_override(raw, assignment)
        if error:
            problems.append(Problem("--set", None, dotted(where), error))
    templated, refs = sweeps.templated(raw)  # `$axis` in any field: stand-ins while validating
    try:
        cfg.experiment = Experiment.model_validate(templated)
    except ValidationError as exc:
        problems.extend(from_validation(exc, templated, cfg.problem))
        problems.extend(_raw_checks(cfg) + sweep_checks.values(cfg.raw, templated, refs, cfg.problem))
        raise ConfigError(problems) from None
    for iv, found in zip(cfg.experiment.interventions, refs, strict=True):
        iv._refs = found
    problems.extend(_raw_checks(cfg) + sweep_checks.values(cfg.raw, templated, refs, cfg.problem))
    problems.extend(_load_records(cfg))
    if not problems:
        problems.extend(corruption_problems(cfg))
    for check in checks:
        problems.extend(check(cfg))
    if problems:
        raise ConfigError(problems)
    return cfg
