"""Load fixed vectors (steering vectors, `set` values) from files or intervention bundles."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ivx.core.errors import UserError
from ivx.store import bundle

if TYPE_CHECKING:
    import torch


class VectorError(UserError, ValueError):
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
        loaded = bundle.load(ref if ref.startswith("hf://") else base_dir / ref)
        return _pick(loaded.tensors, name, ref).float()
    path = Path(ref) if Path(ref).is_absolute() else base_dir / ref
    if not path.is_file():
        raise VectorError(f"vector file {ref!r} not found (looked at {path})")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type
            raise VectorError(f"vector file {path} is not a readable safetensors file ({exc})") from None
        return _pick(tensors, name, str(path)).float()
    if path.suffix in (".pt", ".pth", ".bin"):
        import pickle
        import warnings

        try:
            with warnings.catch_warnings():  # torch warns about pickle protocols before refusing
                warnings.simplefilter("ignore")
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise VectorError(
                f"vector file {path} cannot be loaded safely (only plain tensors, no pickled code): {first}"
            ) from None
        if isinstance(obj, torch.Tensor):
            return obj.float()
        if isinstance(obj, dict):
            return _pick(
                {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}, name, str(path)
            ).float()
        raise VectorError(f"{path} holds a {type(obj).__name__}, not a tensor")
    raise VectorError(f"vector file {ref!r} must be .safetensors or .pt")
