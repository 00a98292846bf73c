"""Non-trainable interventions as pure functions `(base, source) -> new` on `[n, k]` slices.

Hooks select the slice of a component (rows × positions × heads × subspace) and write back
whatever these functions return; nothing here knows about modules or hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

EditFn = Callable[["torch.Tensor", "torch.Tensor | None"], "torch.Tensor"]


def vanilla(base: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
    """Interchange: the source activation replaces the base activation."""
    assert source is not None
    return source.to(base.dtype)


def zero(base: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
    """Zero ablation."""
    return base.new_zeros(base.shape)


def collect(base: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
    """Record only: the activation is left unchanged."""
    return base


def addition(coefficient: float) -> EditFn:
    """base + coefficient × source (the source run's activation or a fixed vector)."""

    def fn(base: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
        assert source is not None
        return base + coefficient * source.to(base.dtype)

    return fn


def subtraction(coefficient: float) -> EditFn:
    """base − coefficient × source."""

    def fn(base: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
        assert source is not None
        return base - coefficient * source.to(base.dtype)

    return fn


def scale(factor: float) -> EditFn:
    """factor × base."""

    def fn(base: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
        return base * factor

    return fn


def set_to(coefficient: float) -> EditFn:
    """coefficient × vector, replacing the base activation (the vector arrives as `source`)."""

    def fn(base: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
        assert source is not None
        return (coefficient * source).to(base.dtype).expand_as(base).clone()

    return fn


def ablate(base: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
    """The engine's reference value (a mean or another record's activation) replaces the base."""
    assert source is not None
    return source.to(base.dtype).expand_as(base).clone()


def add_noise(base: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
    """base + noise, where the caller passes pre-drawn, pre-scaled noise as `source`."""
    assert source is not None
    return base + source.to(base.dtype)


@dataclass(frozen=True)
class KindSpec:
    """One row of the kind table: everything the schema, planner and runner need to know."""

    name: str
    make: Callable[[float | None, float], EditFn] | None  # (value, coefficient) -> edit; None: trainable
    needs_source: bool  # reads a source-run activation (unless a `vector` replaces it)
    fields: frozenset[str]  # fields beyond COMMON_FIELDS that this kind reads
    alias: str | None  # pyvene's class name, accepted as an alias
    description: str
    requires: tuple[str, ...] = ()  # at least one of these fields must be set

    @property
    def trainable(self) -> bool:
        """True for kinds whose parameters are learned (`ivx train`) and loaded from a bundle."""
        return self.make is None


# fields every kind reads: where it acts and what it is called
COMMON_FIELDS: frozenset[str] = frozenset(
    {"kind", "name", "component", "layer", "position", "head", "window"}
)
_SOURCE = frozenset({"source", "source_position"})
_VECTOR = frozenset({"vector", "contrast"})
_FIXED = frozenset({"subspace", "on"})
_TRAINED = _SOURCE | {"bundle"}
_REFERENCE = frozenset({"reference"})  # mean / resample: the prompt set the values come from
_SAE = frozenset({"sae", "feature", "top", "sae_error"})  # the kind acts on an SAE's features


def _weighted(
    name: str,
    make: Callable[[float], EditFn],
    alias: str,
    description: str,
    extra: frozenset[str] = frozenset(),
) -> KindSpec:
    """A kind that combines base and coefficient × source (a source run or a vector)."""
    fields = _FIXED | _SOURCE | _VECTOR | {"coefficient"} | extra
    return KindSpec(name, lambda value, coefficient: make(coefficient), True, fields, alias, description)


KINDS: dict[str, KindSpec] = {
    spec.name: spec
    for spec in (
        KindSpec(
            "vanilla",
            lambda value, coefficient: vanilla,
            True,
            _FIXED | _SOURCE | _VECTOR | _SAE | {"sever", "receivers"},
            "VanillaIntervention",
            "Interchange: the source run's activation (or a vector) replaces the base activation.",
        ),
        _weighted(
            "addition",
            addition,
            "AdditionIntervention",
            "base + coefficient × source (a run or a vector); with `sae`, + coefficient on the features.",
            _SAE,
        ),
        _weighted("subtraction", subtraction, "SubtractionIntervention", "base − coefficient × source."),
        KindSpec(
            "zero",
            lambda value, coefficient: zero,
            False,
            _FIXED | _SAE,
            "ZeroIntervention",
            "Zero ablation.",
        ),
        KindSpec(
            "noise",
            lambda value, coefficient: add_noise,
            False,
            _FIXED | {"value"},
            "NoiseIntervention",
            "base + Gaussian noise of std value (default 3) × the token-embedding std.",
        ),
        KindSpec(
            "scale",
            lambda value, coefficient: scale(value if value is not None else 1.0),
            False,
            _FIXED | _SAE | {"value"},
            None,
            "value × base.",
            requires=("value",),
        ),
        KindSpec(
            "mean",
            lambda value, coefficient: ablate,
            False,
            _FIXED | _REFERENCE | {"pool", "receivers"},
            None,
            "Mean ablation: the site's mean over a reference prompt set (the base prompts unless "
            "`reference` names a file), per position or pooled (`pool`).",
        ),
        KindSpec(
            "resample",
            lambda value, coefficient: ablate,
            False,
            _FIXED | _REFERENCE | {"receivers"},
            None,
            "Resample ablation: the site's value on another record of the same token length, drawn "
            "from the seed (the base prompts unless `reference` names a file).",
        ),
        KindSpec(
            "collect",
            lambda value, coefficient: collect,
            False,
            _FIXED | _SAE,
            "CollectIntervention",
            "Record the activation only (it is left unchanged).",
        ),
        KindSpec(
            "set",
            lambda value, coefficient: set_to(coefficient),
            False,
            _FIXED | _VECTOR | _SAE | {"coefficient", "value"},
            None,
            "coefficient × a fixed vector replaces the base activation (steering); with `sae`, the "
            "features are clamped to `value`.",
            requires=("vector", "contrast"),
        ),
        KindSpec(
            "rotated_space",
            None,
            True,
            _TRAINED | {"interchange_dim"},
            "RotatedSpaceIntervention",
            "DAS: a learned d × d rotation; the first interchange_dim rotated dims are interchanged.",
        ),
        KindSpec(
            "low_rank_rotated_space",
            None,
            True,
            _TRAINED | {"low_rank_dimension"},
            "LowRankRotatedSpaceIntervention",
            "DAS: a learned d × k orthonormal basis (k = low_rank_dimension) is interchanged.",
        ),
        KindSpec(
            "boundless_das",
            None,
            True,
            _TRAINED | {"temperature", "interchange_dim", "low_rank_dimension"},
            "BoundlessRotatedSpaceIntervention",
            "Boundless DAS: a rotation with a learned boundary (starting at interchange_dim or "
            "low_rank_dimension), annealed "
            "over `temperature`.",
        ),
        KindSpec(
            "sigmoid_mask",
            None,
            True,
            _TRAINED | {"temperature"},
            "SigmoidMaskRotatedSpaceIntervention",
            "A learned per-dimension sigmoid mask between base and source, annealed over `temperature`.",
        ),
    )
}
ALIASES: dict[str, str] = {spec.alias: spec.name for spec in KINDS.values() if spec.alias}


def spec(kind: str) -> KindSpec:
    """The table row of a kind (or of its pyvene alias)."""
    return KINDS[ALIASES.get(kind, kind)]


def for_kind(kind: str, *, value: float | None, coefficient: float) -> EditFn:
    """The edit function of a non-trainable intervention kind."""
    make = spec(kind).make
    if make is None:
        raise ValueError(f"intervention kind {kind!r} is not a fixed (non-trainable) intervention")
    return make(value, coefficient)


def noise(seed: int, prompt: int, sample: int, n_positions: int, dim: int, std: float) -> torch.Tensor:
    """Reproducible Gaussian noise for one (prompt, sample): `[n_positions, dim]` with this std.

    The draw depends only on (seed, prompt, sample), never on batching, so any row can be
    recomputed alone and a hand-written oracle can use the same draws.
    """
    import torch

    gen = torch.Generator().manual_seed((seed * 1_000_003 + prompt) * 10_007 + sample)
    return torch.randn(n_positions, dim, generator=gen) * std
