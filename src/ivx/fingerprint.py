"""A run's inputs by content: sha256 of the config, prompt files, vectors, bundles and model.

The manifest stores these; `ivx run --resume` recomputes them and refuses when any differs,
so a resumed run never mixes cells computed from two different inputs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ivx.config import ConfigError, LoadedConfig, Problem

# weights, configs and tokenizer files of a local model (not its README)
MODEL_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json", ".model", ".txt", ".py")
_CACHE: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) → sha256: each file hashed once


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file (cached per path, size and modification time within a process)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _CACHE:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        _CACHE[key] = digest.hexdigest()
    return _CACHE[key]


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.endswith(".tmp"))
    return []


def _reference(cfg: LoadedConfig, ref: str) -> dict[str, str]:
    """A vector/bundle reference: the hashes of its local files, or the hf:// reference itself."""
    if ref.startswith("hf://"):
        return {ref: ref}
    path = Path(ref) if Path(ref).is_absolute() else cfg.path.parent / ref
    return {str(f): sha256_file(f) for f in _files(path)}


def _model(lm: Any) -> dict[str, str]:
    """The model: its local files' hashes (weights, configs, tokenizer), else the Hub commit."""
    local = Path(str(lm.path))
    if local.is_dir():
        files = [f for f in _files(local) if f.suffix in MODEL_SUFFIXES]
        return {f"model:{f.relative_to(local)}": sha256_file(f) for f in files}
    commit = getattr(getattr(lm.model, "config", None), "_commit_hash", None)
    return {f"model:{lm.name}": str(commit or lm.revision or "unpinned")}


def inputs(cfg: LoadedConfig, lm: Any) -> dict[str, str]:
    """Label → sha256 (or Hub revision) of every input the run's numbers depend on."""
    out = {"config": hashlib.sha256(cfg.text.encode()).hexdigest()}
    if cfg.records_file is not None:
        out[str(cfg.records_file)] = sha256_file(cfg.records_file)
    for iv in cfg.experiment.interventions:
        for ref in (iv.vector, iv.bundle):
            if isinstance(ref, str) and not ref.startswith("$"):
                out.update(_reference(cfg, ref))
        contrast = iv.contrast
        if contrast is not None and contrast.file:
            out.update(_reference(cfg, contrast.file))
    out.update(_model(lm))
    return out


def changed(before: dict[str, str], now: dict[str, str]) -> list[str]:
    """Labels of inputs that were added, removed or whose content differs."""
    return sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))


def check(cfg: LoadedConfig, run_dir: Path, before: dict | None, now: dict[str, str]) -> None:
    """Refuse a resume whose inputs (config, prompts, vectors, bundles, model) changed."""
    if before is None:  # a run from before input hashes were recorded: only the config is checked
        return
    names = changed(before, now)
    if names:
        raise ConfigError(
            [
                Problem(
                    name if name != "config" else str(cfg.path),
                    None,
                    "",
                    f"changed since run {run_dir} started; resuming would mix results of two "
                    "experiments (restore it, or start a new run)",
                )
                for name in names
            ]
        )
