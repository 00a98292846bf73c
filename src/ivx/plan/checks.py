"""Model-aware limits checked before anything runs: prompt lengths, plan size, referenced files.

Everything `ivx run` would reject here is rejected by `ivx validate` too, in the same
`file:line  dotted.path  message` form.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ivx.config.loader import LoadedConfig
from ivx.core.errors import ConfigError, Problem
from ivx.model import components
from ivx.plan import grid as plan
from ivx.plan import tokenization
from ivx.store import bundle, hub, vectors

POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length")


def max_positions(lm: Any) -> int | None:
    """The longest sequence the model's position embeddings cover, when its config says."""
    config = getattr(lm.model, "config", None)
    for key in POSITION_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def model_limits(cfg: LoadedConfig, lm: Any, prompts: list, max_cells: int | None) -> None:
    """Prompts must fit the model's positions; the plan must stay under `max_cells` cells."""

    problems: list[Problem] = []
    limit = max_positions(lm)
    for p in prompts if limit is not None else []:
        for run, ids in (("base", p.base_ids), ("source", p.source_ids)):
            if ids is not None and limit is not None and len(ids) > limit:
                problems.append(
                    cfg.problem(
                        ("prompts",),
                        f"prompt {p.index} {run} is {len(ids)} tokens; {lm.name} takes at most {limit} "
                        "positions (max_position_embeddings): shorten it",
                    )
                )
    problems.extend(bundle_shapes(cfg, lm.info))
    problems.extend(vector_shapes(cfg, lm))
    if problems:
        raise ConfigError(problems[:20])
    if max_cells is None:
        return
    variants = len(cfg.experiment.corrupt) if isinstance(cfg.experiment.corrupt, list) else 1
    cells = plan.count(cfg, lm.info, prompts) * variants
    if cells > max_cells:
        raise ConfigError(
            [
                cfg.problem(
                    ("sweep",),
                    f"the plan has {cells:,} cells (prompts × sweep grid), above --max-cells {max_cells:,}; "
                    "its cells alone take ~1.2 KB each before any runs: narrow the sweep or use fewer "
                    "prompts, or pass --force / a larger --max-cells",
                )
            ]
        )


def reference(cfg: LoadedConfig, loc: tuple, path: Path) -> list[Problem]:
    """A referenced bundle or vector file must be intact (hashes, format) before anything runs."""
    import pickle

    try:
        if (path / bundle.MANIFEST).is_file() or loc[-1] == "bundle":
            bundle.verify(path)
        else:
            iv = cfg.experiment.interventions[loc[1]]
            vectors.load_vector(str(path.resolve()), iv.name or f"iv{loc[1]}", cfg.path.parent)
    except (bundle.BundleError, vectors.VectorError, pickle.UnpicklingError) as exc:
        return [cfg.problem(loc, " ".join(str(exc).split()))]
    return []


def hub_reference(cfg: LoadedConfig, loc: tuple, ref: str) -> list[Problem]:
    """An `hf://user/name[@revision]` reference must at least be well formed."""

    try:
        hub.parse_ref(ref)
    except hub.HubError as exc:
        return [cfg.problem(loc, str(exc))]
    return []


def replacement(cfg: LoadedConfig, tokenizer: Any, prompts: list[Any]) -> list[Problem]:
    """A `replace` corruption must find, for every prompt, another subject that keeps its length
    (what the run computes first): checked with the tokenizer alone, before any cell runs."""

    corrupt = cfg.experiment.corrupt
    singles = corrupt if isinstance(corrupt, list) else [corrupt] if corrupt else []
    problems: list[Problem] = []
    for i, single in enumerate(singles):
        if single.kind != "replace":
            continue
        loc: tuple = ("corrupt", i, "kind") if isinstance(corrupt, list) else ("corrupt", "kind")
        try:
            tokenization.replacements(tokenizer, prompts, cfg.experiment.seed)
        except tokenization.TokenizationError as exc:
            problems += [cfg.problem(loc, f"prompt {p}: {message}") for p, _, message in exc.problems]
    return problems


def bundle_shapes(cfg: LoadedConfig, info: Any) -> list[Problem]:
    """A local trained `bundle` must have been made for a model of this width and depth (what the
    run checks when it loads the parameters), reported before anything runs."""

    problems: list[Problem] = []
    expect = {"d_model": info.d_model, "n_layers": info.n_layers}
    for i, iv in enumerate(cfg.experiment.interventions):
        ref = iv.bundle
        if ref is None or ref.startswith(("hf://", "$")):
            continue
        path = Path(ref) if Path(ref).is_absolute() else cfg.path.parent / ref
        if not (path / bundle.MANIFEST).is_file():
            continue  # a missing or broken bundle is reported by `reference`
        try:
            _, manifest, _ = bundle.verify(path)
        except bundle.BundleError:
            continue
        base = manifest.base_model.model_dump()
        for key, value in expect.items():
            if base.get(key) != value:
                problems.append(
                    cfg.problem(
                        ("interventions", i, "bundle"),
                        f"bundle {ref!r} was made for {base.get('name')} ({key} {base.get(key)}), but "
                        f"this experiment's model has {key} {value}",
                    )
                )
                break
    return problems


def vector_shapes(cfg: LoadedConfig, lm: Any) -> list[Problem]:
    """A steering `vector` must be as wide as the component it is written to (checked on the
    model's structure; the run would fail on it after computing its baselines)."""

    problems: list[Problem] = []
    for i, iv in enumerate(cfg.experiment.interventions):
        if not isinstance(iv.vector, str) or iv.vector.startswith(("hf://", "$")):
            continue
        if not isinstance(iv.component, str) or iv.component.startswith("$"):
            continue
        layer = iv.layer if isinstance(iv.layer, int) else 0  # a component's width is the same at every layer
        try:
            vec = vectors.load_vector(iv.vector, iv.name or f"iv{i}", cfg.path.parent)
            site = components.resolve(lm.model, lm.info, iv.component, layer % lm.info.n_layers)
        except Exception:  # noqa: BLE001 - unreadable files and unknown sites are reported elsewhere
            continue
        if vec.dim() == 1 and vec.shape[0] != site.dim:
            problems.append(
                cfg.problem(
                    ("interventions", i, "vector"),
                    f"vector {iv.vector!r} has {vec.shape[0]} dims but {iv.component} has {site.dim}",
                )
            )
    return problems
