"""Non-trainable interventions as pure functions `(base, source) -> new` on `[n, k]` slices.

Hooks select the slice of a component (rows × positions × heads × subspace) and write back
whatever these functions return; nothing here knows about modules or hooks.
"""

from __future__ import annotations

from collections.abc import Callable
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


def add_noise(base: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
    """base + noise, where the caller passes pre-drawn, pre-scaled noise as `source`."""
    assert source is not None
    return base + source.to(base.dtype)


def for_kind(kind: str, *, value: float | None, coefficient: float) -> EditFn:
    """The edit function of a non-trainable intervention kind."""
    if kind == "vanilla":
        return vanilla
    if kind == "zero":
        return zero
    if kind == "collect":
        return collect
    if kind == "addition":
        return addition(coefficient)
    if kind == "subtraction":
        return subtraction(coefficient)
    if kind == "scale":
        return scale(value if value is not None else 1.0)
    if kind == "set":
        return set_to(coefficient)
    if kind == "noise":
        return add_noise
    raise ValueError(f"intervention kind {kind!r} is not a fixed (non-trainable) intervention")


def noise(seed: int, prompt: int, sample: int, n_positions: int, dim: int, std: float) -> torch.Tensor:
    """Reproducible Gaussian noise for one (prompt, sample): `[n_positions, dim]` with this std.

    The draw depends only on (seed, prompt, sample), never on batching, so any row can be
    recomputed alone and a hand-written oracle can use the same draws.
    """
    import torch

    gen = torch.Generator().manual_seed((seed * 1_000_003 + prompt) * 10_007 + sample)
    return torch.randn(n_positions, dim, generator=gen) * std
