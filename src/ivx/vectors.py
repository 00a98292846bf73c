"""Load fixed vectors (steering vectors, `set` values) from files or intervention bundles."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class VectorError(ValueError):
    """A vector reference that cannot be loaded."""


def _pick(tensors: dict[str, torch.Tensor], name: str, where: str) -> torch.Tensor:
    for key in (f"{name}.vector", name, "vector"):
        if key in tensors:
            return tensors[key]
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    raise VectorError(
        f"{where} holds {len(tensors)} tensors ({', '.join(sorted(tensors))}); name one of them "
        f"after the intervention ({name!r} or {name + '.vector'!r})"
    )


def load_vector(ref: str, name: str, base_dir: Path) -> torch.Tensor:
    """A float tensor from a .safetensors / .pt file or a bundle (path or hf://user/name)."""
    import torch

    if ref.startswith("hf://") or (base_dir / ref / "ivx_bundle.json").exists():
        from ivx import bundle

        loaded = bundle.load(ref if ref.startswith("hf://") else base_dir / ref)
        return _pick(loaded.tensors, name, ref).float()
    path = Path(ref) if Path(ref).is_absolute() else base_dir / ref
    if not path.is_file():
        raise VectorError(f"vector file {ref!r} not found (looked at {path})")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return _pick(load_file(str(path)), name, str(path)).float()
    if path.suffix in (".pt", ".pth", ".bin"):
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(obj, torch.Tensor):
            return obj.float()
        if isinstance(obj, dict):
            return _pick(
                {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}, name, str(path)
            ).float()
        raise VectorError(f"{path} holds a {type(obj).__name__}, not a tensor")
    raise VectorError(f"vector file {ref!r} must be .safetensors or .pt")
