"""Intervention bundles: a self-describing, pickle-free folder that others can load and verify.

```
ivx_bundle.json     format version, ivx version, interventions (the experiment-file schema),
                    base model (name, revision, d_model, n_layers), sha256 + size per file
weights.safetensors every tensor, named "<intervention name>.<param>"
README.md           a Hugging Face Hub model card (library_name: ivx, base_model, tags)
```
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ivx.config.schema import Intervention
from ivx.core.errors import UserError
from ivx.core.version import VERSION
from ivx.store import hub

if TYPE_CHECKING:
    import torch

FORMAT_VERSION = 1
MANIFEST = "ivx_bundle.json"
WEIGHTS = "weights.safetensors"


class BundleError(UserError, ValueError):
    """A bundle that is malformed, tampered with, or made for another model."""


class _BaseModelInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    revision: str | None = None
    d_model: int
    n_layers: int


class _FileInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int


class _Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format_version: int
    ivx_version: str
    interventions: list[dict[str, Any]]
    base_model: _BaseModelInfo
    files: dict[str, _FileInfo]
    created: str


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle."""

    path: Path
    interventions: list[dict[str, Any]]
    tensors: dict[str, torch.Tensor]
    base_model: dict[str, Any]
    meta: dict[str, Any]


def sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _validate_interventions(interventions: list[dict[str, Any]], where: str) -> None:

    for i, iv in enumerate(interventions):
        try:
            Intervention.model_validate(iv)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise BundleError(f"{where}: interventions[{i}].{loc}: {err['msg']}") from None


def model_card(
    interventions: list[dict[str, Any]], base_model: dict[str, Any], repo: str | None = None
) -> str:
    """README.md with Hub front matter and a usage snippet."""
    ref = f"hf://{repo}" if repo else "path/to/this/bundle"
    kinds = ", ".join(sorted({str(iv.get("kind")) for iv in interventions}))
    first = interventions[0] if interventions else {}
    return f"""---
library_name: ivx
base_model: {base_model["name"]}
tags: [interpretability, interventions]
---
# ivx intervention bundle

{len(interventions)} intervention(s) ({kinds}) for `{base_model["name"]}` (d_model {base_model["d_model"]},
{base_model["n_layers"]} layers), saved by ivx {VERSION}. Tensors are in `weights.safetensors`
(no pickle); `ivx_bundle.json` lists the interventions and a sha256 per file, checked on load.

## Use

```yaml
model: {{name: {base_model["name"]}}}
interventions:
  - kind: {first.get("kind", "addition")}
    component: {first.get("component", "block_output")}
    layer: {first.get("layer", 0)}
    bundle: {ref}        # or `vector: {ref}` for steering vectors
```
"""


def save(
    out: Path,
    interventions: list[dict[str, Any]],
    tensors: dict[str, torch.Tensor],
    base_model: dict[str, Any],
) -> Path:
    """Write a bundle folder (weights, manifest with hashes, model card)."""
    from safetensors.torch import save_file

    _validate_interventions(interventions, "bundle")
    info = _BaseModelInfo.model_validate(base_model).model_dump()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(out / WEIGHTS))
    (out / "README.md").write_text(model_card(interventions, info))
    files = {
        name: {"sha256": sha256(out / name), "bytes": (out / name).stat().st_size} for name in (WEIGHTS,)
    }
    manifest = {
        "format_version": FORMAT_VERSION,
        "ivx_version": VERSION,
        "interventions": interventions,
        "base_model": info,
        "files": files,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def _local(ref: str | Path) -> Path:
    text = str(ref)
    if text.startswith("hf://"):
        return hub.pull(text)
    return Path(text)


def _listed(path: Path, files: dict[str, _FileInfo]) -> None:
    """The file list must name the weights and only files inside the bundle directory."""
    if WEIGHTS not in files:
        raise BundleError(
            f"{path / MANIFEST}: files does not list {WEIGHTS}; every file the bundle loads must carry "
            "its sha256 (re-save the bundle with `ivx save`)"
        )
    for name in files:
        # lexical: the Hub cache's snapshot files are symlinks into its blob store, which is fine
        parts = Path(name).parts
        if not parts or Path(name).is_absolute() or ".." in parts or "\\" in name:
            raise BundleError(f"{path / MANIFEST}: files entry {name!r} points outside the bundle directory")


def verify(ref: str | Path) -> tuple[Path, _Manifest, dict[str, Any]]:
    """Check a bundle without loading its tensors: manifest, file list, hashes; BundleError if not."""
    path = _local(ref)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{path} is not an ivx bundle (no {MANIFEST})")
    try:
        raw = json.loads(manifest_path.read_bytes().decode())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{manifest_path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    except (UnicodeDecodeError, RecursionError) as exc:
        raise BundleError(f"{manifest_path}: not a JSON text ({type(exc).__name__})") from None
    try:
        manifest = _Manifest.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise BundleError(f"{manifest_path}: {loc}: {err['msg']}") from None
    if manifest.format_version > FORMAT_VERSION:
        raise BundleError(
            f"{manifest_path}: format_version {manifest.format_version} is newer than this ivx "
            f"understands ({FORMAT_VERSION}); upgrade ivx-interventions"
        )
    _listed(path, manifest.files)
    for name, info in manifest.files.items():
        file = path / name
        if not file.is_file():
            raise BundleError(f"{path}: {name} is listed in {MANIFEST} but missing")
        digest = sha256(file)
        if digest != info.sha256:
            raise BundleError(
                f"hash mismatch for {name} in {path}: expected {info.sha256[:12]}…, got {digest[:12]}… "
                "(the file was modified or corrupted)"
            )
    _validate_interventions(manifest.interventions, str(manifest_path))
    return path, manifest, raw


def load(ref: str | Path, *, device: str = "cpu", expect: dict[str, int] | None = None) -> Bundle:
    """Load a bundle from a folder or `hf://user/name[@revision]`, verifying hashes and shape."""
    from safetensors.torch import load_file

    path, manifest, raw = verify(ref)
    base = manifest.base_model.model_dump()
    for key, value in (expect or {}).items():
        if base.get(key) != value:
            raise BundleError(
                f"bundle {ref} was made for {base['name']} ({key} {base.get(key)}), but this experiment's "
                f"model has {key} {value}"
            )
    try:
        tensors = load_file(str(path / WEIGHTS), device="cpu")
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type
        raise BundleError(f"{path / WEIGHTS} is not a readable safetensors file ({exc})") from None
    tensors = {k: v.to(device) for k, v in tensors.items()}
    return Bundle(path, manifest.interventions, tensors, base, raw)


def from_run(run_dir: Path, out: Path) -> Path:
    """Bundle a finished run's computed vectors / trained parameters."""
    import yaml
    from safetensors.torch import load_file

    manifest_file = run_dir / "manifest.json"
    if not manifest_file.is_file():
        raise BundleError(f"{run_dir} is not an ivx run directory (no manifest.json)")
    manifest = json.loads(manifest_file.read_text())
    if manifest.get("status") != "complete":
        raise BundleError(
            f"run {run_dir} has status {manifest.get('status')!r}; only complete runs can be saved"
        )
    weights = run_dir / "interventions.safetensors"
    if not weights.is_file():
        raise BundleError(
            f"run {run_dir} has no interventions.safetensors (no computed vectors or trained parameters)"
        )
    source = run_dir / "interventions.yaml"
    if not source.is_file():
        source = run_dir / "resolved.yaml"
    interventions = yaml.safe_load(source.read_text()).get("interventions", [])
    model = manifest.get("model", {})
    base = {k: model.get(k) for k in ("name", "revision", "d_model", "n_layers")}
    return save(out, interventions, load_file(str(weights)), base)


PYVENE_KINDS = {
    "VanillaIntervention": "vanilla",
    "AdditionIntervention": "addition",
    "SubtractionIntervention": "subtraction",
    "ZeroIntervention": "zero",
    "CollectIntervention": "collect",
    "RotatedSpaceIntervention": "rotated_space",
    "LowRankRotatedSpaceIntervention": "low_rank_rotated_space",
}


def _orthogonal_weight(state: dict[str, Any], prefix: str) -> torch.Tensor:
    """Rebuild a parametrised orthogonal weight from its saved state (pyvene's rotate_layer)."""
    import torch
    from torch import nn
    from torch.nn.utils.parametrizations import orthogonal

    own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    original = own.get("parametrizations.weight.original", own.get("weight"))
    if original is None:
        raise BundleError(f"no rotation weight under {prefix!r} (keys: {sorted(state)})")
    shape: torch.Tensor = original

    class Holder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.empty_like(shape))

    holder = Holder()
    if "parametrizations.weight.original" in own:
        orthogonal(holder)  # parametrises `holder` in place (and returns it)
    holder.load_state_dict(own, strict=False)
    with torch.no_grad():
        return holder.weight.detach().clone()


def from_pyvene(directory: Path) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    """Interventions + tensors from a pyvene `IntervenableModel.save` directory (no pickle)."""
    import torch

    directory = Path(directory)
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise BundleError(f"{directory} has no config.json (not a pyvene intervention directory)")
    config = json.loads(config_file.read_text())
    types = [t.rsplit(".", 1)[-1].rstrip("'>") for t in config.get("intervention_types", [])]
    unsupported = sorted({t for t in types if t not in PYVENE_KINDS})
    if unsupported:
        raise BundleError(
            f"{directory}: cannot map pyvene intervention type(s) {', '.join(unsupported)}; "
            f"ivx maps {', '.join(sorted(PYVENE_KINDS))}"
        )
    keys = config.get("sorted_keys") or [str(i) for i in range(len(types))]
    dims = config.get("intervention_dimensions") or [None] * len(types)
    interventions, tensors = [], {}
    for i, (kind_name, key, rep) in enumerate(zip(types, keys, config["representations"], strict=False)):
        rep = rep if isinstance(rep, dict) else dict(zip(("layer", "component", "unit"), rep, strict=False))
        name = f"pv{i}"
        iv: dict[str, Any] = {
            "kind": PYVENE_KINDS[kind_name],
            "name": name,
            "component": rep.get("component", "block_output"),
            "layer": int(rep.get("layer", 0)),
        }
        state_file = directory / f"intkey_{key}.bin"
        state = torch.load(state_file, map_location="cpu", weights_only=True) if state_file.is_file() else {}
        if iv["kind"] == "low_rank_rotated_space":
            tensors[f"{name}.basis"] = _orthogonal_weight(state, "rotate_layer.")
            iv["low_rank_dimension"] = int(tensors[f"{name}.basis"].shape[1])
        elif iv["kind"] == "rotated_space":
            tensors[f"{name}.rotation"] = _orthogonal_weight(state, "rotate_layer.")
            k = dims[i] if isinstance(dims[i], int) else int(rep.get("low_rank_dimension") or 1)
            tensors[f"{name}.interchange_dim"] = torch.tensor(k)
            iv["interchange_dim"] = k
        elif "source_representation" in state:  # a constant source: a fixed vector
            tensors[f"{name}.vector"] = state["source_representation"].float().reshape(-1)
            iv["kind"] = "set" if iv["kind"] == "vanilla" else iv["kind"]
            iv["vector"] = "."
        interventions.append(iv)
    return interventions, tensors
