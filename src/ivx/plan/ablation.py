"""Mean and resample ablations, and attention-pattern sites: reference sets, the draw, the checks.

`kind: mean` replaces a site by its mean over a reference prompt set (the circuit-discovery
ablation of IOI and ACDC): per position over the reference records as long as the base prompt
(`pool: position`, the default — templated prompts align token by token), or one vector pooled
over every position of every record (`pool: all`). `kind: resample` replaces it by its value on
another record of the same token length, drawn per prompt from the experiment's seed. The
reference set is the experiment's base prompts unless `reference: {file, limit}` names a JSONL
file (only `base` is read). Pure: the draw depends only on (seed, prompt, the set's lengths), so
a resumed run and every Ray worker draw the same records.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ivx.config import sources
from ivx.config import sweep as sweeps
from ivx.config.fields import is_ref
from ivx.config.inputs import PromptFile
from ivx.config.loader import LoadedConfig
from ivx.config.schema import Intervention
from ivx.core.errors import ConfigError, Problem
from ivx.plan import tokenization
from ivx.plan.tokenization import TokenizedPrompt

ABLATIONS = frozenset({"mean", "resample"})
PATTERN = "head_attention_pattern"
# kinds that make sense on a pattern (probabilities): copies, zero, scale, record, ablations
PATTERN_KINDS = frozenset({"vanilla", "zero", "scale", "collect", "addition", "subtraction", *ABLATIONS})


@dataclass(frozen=True)
class ReferenceSet:
    """The token ids of a reference prompt set, by record index."""

    ids: dict[int, tuple[int, ...]]
    own: bool  # the experiment's base prompts (a record is never resampled from itself)

    def lengths(self) -> dict[int, list[int]]:
        """Record indices by token length, in order."""
        out: dict[int, list[int]] = {}
        for index, ids in self.ids.items():
            out.setdefault(len(ids), []).append(index)
        return out


def values(cfg: LoadedConfig, value: Any) -> list[Any]:
    """The values a field takes: itself, or every value of the sweep axis it names."""
    if is_ref(value):
        axis = sweeps.axis_values(cfg.experiment.sweep).get(value[1:], [])
        return list(axis) if isinstance(axis, list) else []
    return [value]


def ablating(cfg: LoadedConfig) -> dict[int, Intervention]:
    """The interventions that are (or, swept, can be) mean or resample ablations, by index."""
    return {
        i: iv for i, iv in enumerate(cfg.experiment.interventions) if ABLATIONS & set(values(cfg, iv.kind))
    }


def reference_set(
    cfg: LoadedConfig, tokenizer: Any, prompts: list[TokenizedPrompt], index: int
) -> ReferenceSet:
    """Intervention `index`'s reference set: its `reference` file tokenized, or the base prompts."""
    ref = cfg.experiment.interventions[index].reference
    if ref is None:
        return ReferenceSet({p.index: p.base_ids for p in prompts}, own=True)
    loc = ("interventions", index, "reference", "file")
    spec = PromptFile.model_validate({"file": ref.file, "limit": ref.limit})
    problems: list[Problem] = []
    records = []
    try:
        for row in sources.rows(spec, Path(cfg.path).parent):
            record = sources.record(row, spec, problems)
            if record is not None:
                records.append(record)
            if ref.limit is not None and len(records) >= ref.limit:
                break
    except (sources.SourceError, OSError) as exc:
        raise ConfigError([cfg.problem(loc, str(exc))]) from None
    if problems:
        raise ConfigError(problems[:20])
    if not records:
        raise ConfigError([cfg.problem(loc, f"{ref.file!r} has no records")])
    bos = tokenization.use_bos(tokenizer, cfg.experiment.model.bos)
    ids = {i: tuple(tokenization.ids(tokenizer, r.base, bos)) for i, r in enumerate(records)}
    return ReferenceSet(ids, own=False)


def resample_map(refs: ReferenceSet, prompts: dict[int, int], seed: int) -> dict[int, int | None]:
    """Per prompt (index → token length): the reference record it is resampled from, or None if
    no other record has its length. Drawn from (seed, prompt) alone, so batching never matters."""
    by_length = refs.lengths()
    out: dict[int, int | None] = {}
    for prompt, length in sorted(prompts.items()):
        pool = [r for r in by_length.get(length, []) if not (refs.own and r == prompt)]
        out[prompt] = random.Random(f"ivx-resample:{seed}:{prompt}").choice(pool) if pool else None
    return out


def check(cfg: LoadedConfig, tokenizer: Any, prompts: list[TokenizedPrompt], mode: str) -> None:
    """Every problem of the mean / resample ablations and pattern sites, as one ConfigError."""
    problems = pattern_problems(cfg, mode)
    for i, iv in ablating(cfg).items():
        if mode != "run":
            problems.append(
                cfg.problem(("interventions", i, "kind"), f"{iv.kind} ablations run under ivx run only")
            )
            continue
        try:
            refs = reference_set(cfg, tokenizer, prompts, i)
        except ConfigError as exc:
            problems += exc.problems
            continue
        problems += _fits(cfg, i, iv, refs, prompts)
    if problems:
        raise ConfigError(problems)


def _fits(
    cfg: LoadedConfig, i: int, iv: Intervention, refs: ReferenceSet, prompts: list[TokenizedPrompt]
) -> list[Problem]:
    """Each prompt needs reference records of its length (per-position means, resampling)."""
    kinds = set(values(cfg, iv.kind))
    by_length = refs.lengths()
    where = f"reference {iv.reference.file!r}" if iv.reference else "the base prompts"
    problems: list[Problem] = []
    if "mean" in kinds and iv.pool == "position":
        for p in prompts:
            if p.length not in by_length:
                problems.append(
                    cfg.problem(
                        ("interventions", i, "pool"),
                        f"prompt {p.index} has {p.length} tokens but no record of {where} does; per-position "
                        "means need records of the same length (or set pool: all)",
                    )
                )
                break
    if "resample" in kinds:
        drawn = resample_map(refs, {p.index: p.length for p in prompts}, cfg.experiment.seed)
        lonely = [p for p, r in drawn.items() if r is None]
        if lonely:
            length = next(p.length for p in prompts if p.index == lonely[0])
            problems.append(
                cfg.problem(
                    ("interventions", i, "kind"),
                    f"resample: prompt {lonely[0]} has {length} tokens and no other record of {where} "
                    f"does ({len(lonely)} prompt(s) like it); resampling copies a record of the same length",
                )
            )
    return problems


def pattern_problems(cfg: LoadedConfig, mode: str = "run") -> list[Problem]:
    """What a `head_attention_pattern` site cannot do, each with the reason."""
    exp = cfg.experiment
    problems: list[Problem] = []
    for i, iv in enumerate(exp.interventions):
        for j, receiver in enumerate(iv.receivers or []):
            if receiver.component == PATTERN:
                problems.append(
                    cfg.problem(
                        ("interventions", i, "receivers", j, "component"),
                        f"{PATTERN} is not a path-patching receiver (receivers are module inputs)",
                    )
                )
        if PATTERN not in values(cfg, iv.component):
            continue
        at = ("interventions", i)
        if mode != "run":
            problems.append(cfg.problem((*at, "component"), f"{PATTERN} sites run under ivx run only"))
            continue
        for kind in values(cfg, iv.kind):
            if kind not in PATTERN_KINDS:
                problems.append(
                    cfg.problem(
                        (*at, "kind"),
                        f"{kind!r} does not apply to {PATTERN} (a pattern's width is its prompt's length); "
                        f"allowed: {', '.join(sorted(PATTERN_KINDS))}",
                    )
                )
        if iv.vector is not None or iv.contrast is not None:
            field = "vector" if iv.vector is not None else "contrast"
            problems.append(
                cfg.problem((*at, field), f"{PATTERN} has no fixed width for a vector; copy from a run")
            )
        if "mean" in values(cfg, iv.kind) and iv.pool == "all":
            problems.append(
                cfg.problem(
                    (*at, "pool"),
                    f"pool: all averages positions, but a {PATTERN} row has one "
                    "entry per key; use pool: position",
                )
            )
        if exp.method != "exact":
            problems.append(
                cfg.problem(
                    ("method",),
                    f"method: {exp.method} does not take {PATTERN} sites (gradients and path patching "
                    "go through module hooks); use method: exact",
                )
            )
        if iv.sever is not None or iv.receivers:
            field = "sever" if iv.sever is not None else "receivers"
            problems.append(cfg.problem((*at, field), f"{field} does not apply to {PATTERN} sites"))
    return problems
