"""A config checked against its model, ready to execute: one `Prepared` per corruption variant.

`ivx.recipes.prepare` makes them for every command; `ivx run` executes them, `ivx generate` and
`ivx train` build their own runtime records (bound items, training points) from them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ivx.config.loader import LoadedConfig
from ivx.plan.grid import Plan


@dataclass
class Prepared:
    """A config checked against its model, ready to execute."""

    cfg: LoadedConfig
    lm: Any
    prompts: list
    plan: Plan
    dropped: list[dict[str, Any]] | None = None
    label: str | None = None  # the corruption's name when `corrupt` lists several


def variants(cfg: LoadedConfig) -> list[tuple[str | None, LoadedConfig]]:
    """One config per corruption when `corrupt` is a list (labelled by kind), else the config."""
    corrupt = cfg.experiment.corrupt
    if not isinstance(corrupt, list):
        return [(None, cfg)]
    out: list[tuple[str | None, LoadedConfig]] = []
    kinds = [c.kind for c in corrupt]
    for i, single in enumerate(corrupt):
        label = single.kind if kinds.count(single.kind) == 1 else f"{single.kind}{i}"
        copy = dataclasses.replace(cfg, experiment=cfg.experiment.model_copy(update={"corrupt": single}))
        out.append((label, copy))
    return out
