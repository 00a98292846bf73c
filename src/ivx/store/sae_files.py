"""Sparse autoencoders on disk: SAELens's layout, read and written without the sae-lens package.

```
cfg.json                 architecture, d_in, d_sae, dtype, hook_name (TransformerLens name),
                         apply_b_dec_to_input, normalize_activations, k, ... (SAELens keys;
                         newer releases nest hook_name/hook_layer under `metadata` or `meta`,
                         older ones spell them hook_point / hook_point_layer)
sae_weights.safetensors  W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in];
                         jumprelu adds threshold [d_sae]; gated has b_gate, r_mag, b_mag [d_sae]
                         and no b_enc
```

A reference is a local directory or `hf://user/name[/subdir][@revision]` (downloaded through the
Hugging Face cache, only the subdirectory's files). Reading checks the JSON, the tensor names and
their shapes against `d_in`/`d_sae`; every problem is an `SAEFileError` naming the file and field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ivx.core.errors import UserError
from ivx.store import hub, sae_assets

if TYPE_CHECKING:
    import torch

CFG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"


class SAEFileError(UserError, ValueError):
    """An SAE directory or reference that cannot be read (names the file and the field)."""


def split_ref(ref: str) -> tuple[str, str, str | None]:
    """`hf://user/name/sub/dir@rev` → (repo id, subdirectory or '', revision or None)."""
    text = ref.removeprefix("hf://")
    text, _, revision = text.partition("@")
    parts = [p for p in text.split("/") if p]
    if len(parts) < 2 or any(p in (".", "..") for p in parts):
        raise SAEFileError(f"{ref!r} is not an SAE reference: expected hf://user/name[/subdir][@revision]")
    return hub.repo_id("/".join(parts[:2])), "/".join(parts[2:]), revision or None


def resolve(ref: str | Path, base_dir: Path | None = None, revision: str | None = None) -> Path:
    """The local directory of an SAE reference (a bundled name such as `ivx-toy-sae`, a folder, or
    hf://… downloaded into the HF cache)."""
    if (found := sae_assets.bundled(ref)) is not None:
        return found
    if isinstance(ref, str) and ref.startswith("hf://"):
        return _download(ref, revision)
    path = Path(ref)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.is_dir():
        raise SAEFileError(
            f"SAE {str(ref)!r} not found (looked for a directory at {path} holding {CFG} and {WEIGHTS}; "
            "or give hf://user/name[/subdir])"
        )
    return path


def _download(ref: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download

    repo, sub, rev = split_ref(ref)
    rev = revision or rev
    patterns = [f"{sub}/{CFG}", f"{sub}/{WEIGHTS}"] if sub else [CFG, WEIGHTS]
    hub.use_timeouts()
    try:
        local = Path(snapshot_download(repo, revision=rev, endpoint=hub.endpoint(), allow_patterns=patterns))
    except Exception as exc:  # noqa: BLE001 - huggingface_hub raises many types
        name = type(exc).__name__
        if "LocalEntryNotFound" in name or "OfflineMode" in name:
            raise SAEFileError(
                f"SAE {ref!r} is not in the Hugging Face cache and the Hub is offline "
                "(HF_HUB_OFFLINE=1): download it once online, or give a local directory"
            ) from None
        raise SAEFileError(f"SAE {ref!r}: {hub.explain(exc, repo)}") from None
    folder = local / sub if sub else local
    if not (folder / CFG).is_file():
        raise SAEFileError(f"SAE {ref!r}: the repository has no {sub + '/' if sub else ''}{CFG}")
    return folder


def read_cfg(directory: Path) -> dict[str, Any]:
    """cfg.json of an SAE directory as a dict (no weights read)."""
    cfg_path = directory / CFG
    if not cfg_path.is_file():
        raise SAEFileError(
            f"{cfg_path}: missing; an SAE directory holds {CFG} and {WEIGHTS} (SAELens layout)"
        )
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SAEFileError(f"{cfg_path}: not valid JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise SAEFileError(f"{cfg_path}: expected a JSON object, found {type(cfg).__name__}")
    return cfg


def read(directory: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(cfg.json as a dict, the tensors of sae_weights.safetensors) of an SAE directory."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights_path = directory / WEIGHTS
    cfg = read_cfg(directory)
    if not weights_path.is_file():
        raise SAEFileError(
            f"{weights_path}: missing; an SAE directory holds {CFG} and {WEIGHTS} (SAELens layout)"
        )
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise SAEFileError(f"{weights_path}: not a readable safetensors file ({exc})") from None
    return cfg, tensors


def write(directory: Path, cfg: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    """Write cfg.json and sae_weights.safetensors (SAELens layout) into `directory`; return it."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(directory / WEIGHTS))
    (directory / CFG).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return directory
