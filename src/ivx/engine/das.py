"""Trainable interventions: distributed alignment search (Geiger et al. 2023, "Finding
Alignments Between Interpretable Causal Variables and Distributed Neural Representations").

A DAS intervention interchanges a learned subspace between the base and the source run:
`new = base + ((source − base) W) Wᵀ` for an orthonormal basis W (d × k). Orthogonality is kept by
parametrisation (`torch.nn.utils.parametrizations.orthogonal` with the matrix-exponential map: the
default Householder map collapsed to a zero matrix under AdamW weight decay in our tests).

- `low_rank_rotated_space`: W is d × k (`low_rank_dimension`).
- `rotated_space`: a full d × d rotation R; the first `interchange_dim` rotated dims are swapped.
- `boundless_das`: a full rotation and a learned soft boundary over rotated dims (sigmoid with a
  temperature annealed from `temperature[0]` to `temperature[1]`).
- `sigmoid_mask`: a learned per-dimension sigmoid mask, no rotation.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ivx.store import bundle

if TYPE_CHECKING:
    import torch

    from ivx.config.schema import Intervention
    from ivx.core.interventions import EditFn


def _orthogonal(d_in: int, d_out: int) -> Any:
    """A bias-free linear map whose weight stays orthonormal (matrix-exponential parametrisation)."""
    from torch import nn
    from torch.nn.utils.parametrizations import orthogonal

    return orthogonal(nn.Linear(d_in, d_out, bias=False), orthogonal_map="matrix_exp")


def _low_rank() -> type:
    from torch import nn

    class LowRank(nn.Module):
        """new = base + ((source − base) W) Wᵀ with W orthonormal (d × k)."""

        def __init__(self, d: int, k: int) -> None:
            super().__init__()
            self.rotate = _orthogonal(d, k)

        def basis(self) -> torch.Tensor:
            weight: torch.Tensor = self.rotate.weight
            return weight.T  # [d, k]

        def forward(self, base: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
            w = self.basis()
            return base + ((source - base) @ w) @ w.T

        def params(self) -> dict[str, torch.Tensor]:
            return {"basis": self.basis().detach()}

    return LowRank


def _rotated() -> type:
    import torch
    from torch import nn

    class Rotated(nn.Module):
        """Swap the first k coordinates after a full learned rotation R (d × d)."""

        def __init__(self, d: int, k: int) -> None:
            super().__init__()
            self.rotate = _orthogonal(d, d)
            self.k = k

        def forward(self, base: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
            r: torch.Tensor = self.rotate.weight.T  # [d, d], orthogonal
            rb, rs = base @ r, source @ r
            mixed = torch.cat([rs[..., : self.k], rb[..., self.k :]], dim=-1)
            return mixed @ r.T

        def params(self) -> dict[str, torch.Tensor]:
            return {"rotation": self.rotate.weight.T.detach(), "interchange_dim": torch.tensor(self.k)}

    return Rotated


def _boundless() -> type:
    import torch
    from torch import nn

    class Boundless(nn.Module):
        """Full rotation + a learned soft boundary: dims below the boundary come from the source."""

        temperature: torch.Tensor
        index: torch.Tensor

        def __init__(self, d: int, k: int) -> None:
            super().__init__()
            self.rotate = _orthogonal(d, d)
            self.boundary = nn.Parameter(torch.tensor(float(k)))
            self.register_buffer("temperature", torch.tensor(1.0))
            self.register_buffer("index", torch.arange(d).float())

        def mask(self) -> torch.Tensor:
            return torch.sigmoid((self.boundary - self.index) / self.temperature)

        def forward(self, base: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
            r: torch.Tensor = self.rotate.weight.T
            m = self.mask()
            return ((1 - m) * (base @ r) + m * (source @ r)) @ r.T

        def params(self) -> dict[str, torch.Tensor]:
            return {"rotation": self.rotate.weight.T.detach(), "mask": self.mask().detach()}

    return Boundless


def _sigmoid_mask() -> type:
    import torch
    from torch import nn

    class SigmoidMask(nn.Module):
        """Per-dimension learned mask between base and source, no rotation."""

        temperature: torch.Tensor

        def __init__(self, d: int, k: int) -> None:
            super().__init__()
            self.logits = nn.Parameter(torch.zeros(d))
            self.register_buffer("temperature", torch.tensor(1.0))

        def mask(self) -> torch.Tensor:
            return torch.sigmoid(self.logits / self.temperature)

        def forward(self, base: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
            m = self.mask()
            return (1 - m) * base + m * source

        def params(self) -> dict[str, torch.Tensor]:
            return {"mask": self.mask().detach()}

    return SigmoidMask


_FACTORIES: dict[str, Callable[[], type]] = {
    "low_rank_rotated_space": _low_rank,
    "rotated_space": _rotated,
    "boundless_das": _boundless,
    "sigmoid_mask": _sigmoid_mask,
}


def module(kind: str, d: int, iv: Intervention) -> Any:
    """A fresh trainable intervention module of this kind for width d."""
    k = iv.low_rank_dimension or iv.interchange_dim or 1
    if kind not in _FACTORIES:
        raise ValueError(f"{kind!r} is not a trainable intervention kind")
    if k > d:
        raise ValueError(f"low_rank_dimension/interchange_dim {k} exceeds the component width {d}")
    return _FACTORIES[kind]()(d, k)


def edit_fn(kind: str, params: dict[str, torch.Tensor]) -> EditFn:
    """A pure edit function from frozen, saved parameters (what `ivx run` uses)."""
    if "basis" in params:
        w = params["basis"]

        def low_rank(base: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
            assert source is not None
            return base + ((source - base) @ w.to(base)) @ w.to(base).T

        return low_rank
    if "rotation" in params:
        r = params["rotation"]
        if "mask" in params:
            m = params["mask"]
        else:
            k = int(params["interchange_dim"])
            m = r.new_zeros(r.shape[0]) + (r.new_ones(r.shape[0]).cumsum(0) <= k).float()

        def rotated(base: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
            assert source is not None
            rr, mm = r.to(base), m.to(base)
            return ((1 - mm) * (base @ rr) + mm * (source @ rr)) @ rr.T

        return rotated
    if "mask" in params:
        m = params["mask"]

        def masked(base: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
            assert source is not None
            mm = m.to(base)
            return (1 - mm) * base + mm * source

        return masked
    raise ValueError(f"no parameters for a {kind} intervention (expected basis, rotation or mask)")


def load_params(name: str, ref: str, base_dir: Path, expect: dict[str, int] | None = None) -> dict[str, Any]:
    """Parameters of intervention `name` from a bundle (folder or hf://) or a .safetensors file."""

    prefix = f"{name}."
    if ref.endswith(".safetensors"):
        from safetensors.torch import load_file

        path = Path(ref) if Path(ref).is_absolute() else base_dir / ref
        tensors = load_file(str(path))
    else:
        loaded = bundle.load(ref if ref.startswith("hf://") else base_dir / ref, expect=expect)
        tensors = loaded.tensors
    params = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    if not params:
        names = sorted({k.split(".")[0] for k in tensors})
        if len(names) == 1:  # a bundle with one intervention: use it whatever its name
            params = {k.split(".", 1)[1]: v for k, v in tensors.items()}
        else:
            raise ValueError(f"{ref} has no parameters for intervention {name!r}; it has {names}")
    return params
