"""Controls of `ivx train` (DAS): the same training where there should be nothing to find.

`shuffled_labels` trains and scores on counterfactual labels permuted across records;
`random_init` trains on a re-initialised copy of the model; `placebo` is the untrained random basis
every `ivx train` reports as `control_iia`. A warning fires where a control's IIA comes within
`MARGIN` of the real one (Arora et al. 2024, "CausalGym"; Wu et al. 2023).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import Any

from ivx.methods import iit
from ivx.methods.controls import reinitialised

MARGIN = 0.5  # a control whose effect reaches this fraction of the real one is reported


DAS_CONTROLS: tuple[str, ...] = ("shuffled_labels", "random_init", "placebo")
_RANDOM_MODELS: dict[tuple[int, int], Any] = {}  # (id of the model, seed) → its re-initialised copy


def das_point(
    lm: Any,
    cfg: Any,
    iv: Any,
    site: Any,
    examples: Callable[[Any], tuple[list[Any], list[Any]]],
    settings: Any,
    seed: int,
) -> dict[str, float]:
    """Held-out IIA of one DAS grid point under each control of the config (`<name>_iia`).

    `examples(model)` gives the point's (train, held-out) examples on a model. shuffled_labels
    trains and scores on counterfactual targets permuted across records; random_init trains on
    the re-initialised model; placebo is the untrained random basis that `ivx train` always
    reports as `control_iia`.
    """
    names = cfg.experiment.controls
    out: dict[str, float] = {}
    if "shuffled_labels" in names:
        train_ex, held_ex = examples(lm)
        every = train_ex + held_ex
        targets = [ex.target for ex in every]
        random.Random(seed).shuffle(targets)
        shuffled = [dataclasses.replace(ex, target=t) for ex, t in zip(every, targets, strict=True)]
        picked = shuffled[: len(train_ex)], shuffled[len(train_ex) :]
        out["shuffled_labels_iia"] = iit.train_point(lm, site, iv, settings, *picked, seed, _quiet)["iia"]
    if "random_init" in names:
        key = (id(lm.model), cfg.experiment.seed)
        if key not in _RANDOM_MODELS:
            _RANDOM_MODELS.clear()
            _RANDOM_MODELS[key] = reinitialised(lm, cfg.experiment.seed)
        rand = _RANDOM_MODELS[key]
        out["random_init_iia"] = iit.train_point(rand, site, iv, settings, *examples(rand), seed, _quiet)[
            "iia"
        ]
    return out


def _quiet(message: str) -> None:
    """Controls train silently: the log is about the real intervention."""


def das_warnings(points: list[dict[str, Any]]) -> list[str]:
    """A warning per grid point where a control's IIA comes within MARGIN of the real IIA."""
    out = []
    for p in points:
        for name in ("control", *DAS_CONTROLS[:2]):
            value = p.get(f"{name}_iia")
            if isinstance(value, float) and p["iia"] > 0 and value >= MARGIN * p["iia"]:
                out.append(
                    f"point {p['point']}: {name} IIA {value:.3f} is within {MARGIN:.0%} of the real IIA "
                    f"{p['iia']:.3f}; the subspace may fit anything at this site"
                )
    return out
