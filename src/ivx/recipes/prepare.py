"""One `prepare` for every command: load → schema → per-command checks → model-aware checks → plan.

`ivx validate --for X` and `ivx X` (run, generate, train) and the Ray workers all prepare a config
here, so what validate accepts the command accepts and what it rejects the command rejects, line
for line: the fields a command would ignore (`plan.checks.ignored`), the run's method rules, the
training checks (subspace widths, records left to train on after `max_records` and the split).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ivx.config import loader as config_mod
from ivx.config.loader import LoadedConfig
from ivx.core import threads
from ivx.core.errors import ConfigError, Problem
from ivx.methods import registry
from ivx.model import loading as models
from ivx.plan import ablation, checks, tokenization
from ivx.plan import grid as plan
from ivx.plan import sae as sae_plan
from ivx.plan.grid import Mode
from ivx.plan.prepared import Prepared, variants


def prepare(path: str | Path, overrides: tuple[str, ...] = (), lm: Any = None) -> Prepared:
    """Validate the config, load the model, tokenize prompts and expand the plan (for `ivx run`).

    `lm` reuses an already loaded `models.LoadedModel` (library use: many configs, one model).
    Raises ConfigError (schema and model-aware problems) or models.ModelLoadError.
    """
    return prepare_all(path, overrides, lm)[0]


def prepare_all(
    path: str | Path,
    overrides: tuple[str, ...] = (),
    lm: Any = None,
    weights: bool = True,
    max_cells: int | None = None,
    mode: Mode = "run",
) -> list[Prepared]:
    """Prepare a config for `ivx <mode>`: one Prepared per corruption variant (one unless `corrupt`
    is a list). `ivx validate --for <mode>` calls this with `weights=False`, the commands with True.

    Load → schema (and the run's method rules) → fields the command ignores → model structure →
    model-aware and command checks → plan; every problem found up to the plan is raised at once.
    `weights=False` checks against the model's structure only (meta device, nothing downloaded
    but its config and tokenizer); fact selection, which needs forward passes, is then skipped.
    `max_cells` refuses larger plans before they are built (their cells alone fill memory).
    """

    cfg = config_mod.load(path, overrides, (registry.config_checks,) if mode == "run" else ())
    threads.configure(cfg.experiment.threads)  # every command honours `threads:` (never the results)
    ignored = checks.ignored(cfg, mode)
    spec = cfg.experiment.model
    if lm is None:
        # the structure first (meta device): a bad layer or position is reported before minutes
        # of loading a large model's weights
        try:
            lm = models.load_spec(spec, weights=False)
        except models.MetaUnsupported:
            if not weights:
                raise
            lm = models.load_spec(spec)  # its init needs real tensors: check after loading
    try:
        out = _checked(cfg, lm, max_cells, mode)
    except ConfigError as exc:
        raise ConfigError(list(dict.fromkeys(exc.problems + ignored))) from None
    if ignored:
        raise ConfigError(ignored)
    if weights and lm.device.type == "meta":
        lm = models.load_spec(spec)
        out = [dataclasses.replace(prep, lm=lm) for prep in out]
    if mode != "run":
        return out
    trace = cfg.experiment.trace
    prompts = out[0].prompts
    if trace is not None and trace.select_correct and weights:
        prompts, dropped = select_correct(lm, prompts)
        if not prompts:
            raise ConfigError(
                [cfg.problem(("trace", "select_correct"), "the model predicts none of the targets")]
            )
        out = _expand(cfg, lm, prompts, dropped, mode)
    problems = checks.replacement(cfg, lm.tokenizer, prompts)
    if problems:
        raise ConfigError(problems)  # before the run directory and any cell
    return out


def _checked(cfg: LoadedConfig, lm: Any, max_cells: int | None, mode: Mode) -> list[Prepared]:
    """Tokens, files, model limits, the method's and the command's checks, then the plan."""

    records = cfg.records
    train = cfg.experiment.train
    if mode == "train" and train is not None and train.max_records:
        records = records[: train.max_records]  # `ivx train` trains on the first max_records
    prompts = tokenization.for_config(cfg, lm.tokenizer, records)
    _check_files(cfg)
    ablation.check(cfg, lm.tokenizer, prompts, mode)
    checks.model_limits(cfg, lm, prompts, max_cells)
    if mode == "run":
        registry.check_model(cfg, lm)
    out = _expand(cfg, lm, prompts, None, mode)  # raises ConfigError with every model-aware problem
    if mode == "train":
        problems = checks.subspace_widths(cfg, lm, out[0].plan.cells)
        problems += checks.training_records(cfg, len(prompts))
        if problems:
            raise ConfigError(problems)
    return out


def _expand(cfg: LoadedConfig, lm: Any, prompts: list, dropped: list | None, mode: Mode) -> list[Prepared]:
    """One Prepared per corruption variant, cell indices unique across variants."""

    out = []
    offset = 0
    for label, variant in variants(cfg):
        expanded = plan.expand(variant, lm.info, prompts, mode)
        cells = tuple(dataclasses.replace(c, index=c.index + offset) for c in expanded.cells)
        offset += len(cells)
        out.append(Prepared(variant, lm, prompts, dataclasses.replace(expanded, cells=cells), dropped, label))
    return out


def _check_files(cfg: LoadedConfig) -> None:
    """Vector and bundle references must exist before anything runs (hf:// is checked on load)."""

    problems = []
    for i, iv in enumerate(cfg.experiment.interventions):
        for field in ("vector", "bundle"):
            ref = getattr(iv, field)
            if isinstance(ref, str) and ref.startswith("hf://"):
                problems.extend(checks.hub_reference(cfg, ("interventions", i, field), ref))
            if not isinstance(ref, str) or ref.startswith("hf://") or ref.startswith("$"):
                continue
            path = Path(ref) if Path(ref).is_absolute() else cfg.path.parent / ref
            if not path.exists():
                problems.append(
                    cfg.problem(("interventions", i, field), f"{ref!r} not found (looked at {path})")
                )
            else:
                problems.extend(checks.reference(cfg, ("interventions", i, field), path))
        if iv.contrast is not None and iv.contrast.file is not None:
            problems.extend(_contrast_pairs(cfg, ("interventions", i, "contrast", "file"), iv.contrast.file))
    problems.extend(sae_plan.file_problems(cfg))  # SAEs: every tensor's name and shape
    if problems:
        raise ConfigError(problems)


def _contrast_pairs(cfg: LoadedConfig, loc: tuple, ref: str) -> list[Problem]:
    """A `contrast.file` must be JSONL of {positive, negative} prompt pairs (read when binding)."""

    path = Path(ref) if Path(ref).is_absolute() else cfg.path.parent / ref
    if not path.is_file():
        return [cfg.problem(loc, f"{ref!r} not found (looked at {path})")]
    try:
        lines = [(n, line) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        return [cfg.problem(loc, f"{ref!r} is not readable UTF-8 text ({exc})")]
    for n, line in lines:
        try:
            pair = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            pair = None
        if not (
            isinstance(pair, dict) and all(isinstance(pair.get(k), str) for k in ("positive", "negative"))
        ):
            return [
                cfg.problem(
                    loc, f"{ref!r} line {n} must be a JSON object with `positive` and `negative` text"
                )
            ]
    return [] if lines else [cfg.problem(loc, f"{ref!r} has no pairs")]


def select_correct(lm: Any, prompts: list) -> tuple[list, list[dict[str, Any]]]:
    """Keep prompts whose greedy next token is the target's first token; report the others."""
    import torch

    kept, dropped = [], []
    with torch.inference_mode():
        for p in prompts:
            logits = lm.model(input_ids=torch.tensor([p.base_ids], device=lm.device)).logits[0, -1]
            top = int(logits.argmax())
            if p.target_id is None:
                dropped.append({"prompt_index": p.index, "base": p.record.base, "reason": "no target"})
            elif top != p.target_id:
                predicted = lm.tokenizer.decode([top])
                dropped.append(
                    {
                        "prompt_index": p.index,
                        "base": p.record.base,
                        "target": p.record.target,
                        "predicted": predicted,
                        "reason": f"greedy prediction {predicted!r} is not the target",
                    }
                )
            else:
                kept.append(p)
    return kept, dropped
