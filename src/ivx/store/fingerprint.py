"""A run's inputs by content: sha256 of the config, prompt files, vectors, bundles and model.

The manifest stores these; `ivx run --resume` recomputes them and refuses when any differs,
so a resumed run never mixes cells computed from two different inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ivx.config import sweep as sweeps
from ivx.config.loader import LoadedConfig
from ivx.core.errors import ConfigError, Problem

# weights, configs and tokenizer files of a local model (not its README)
MODEL_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json", ".model", ".txt", ".py")
_CACHE: dict[str, dict[str, Any]] = {}  # resolved path → {"stat": [...], "sha256": hex}: this process
_STORE_LIMIT = 20_000  # entries kept in the on-disk store (least recently hashed dropped first)


def cache_dir() -> Path:
    """Where ivx keeps small caches: $IVX_CACHE_DIR, else $XDG_CACHE_HOME/ivx, else ~/.cache/ivx."""
    if os.environ.get("IVX_CACHE_DIR"):
        return Path(os.environ["IVX_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ivx"


def _stat_key(path: Path) -> list[int]:
    """What changes whenever a file's bytes do (git's index keeps the same): size, inode, mtime, ctime.

    `ctime` moves on every write and cannot be set back by `touch`, so a file rewritten with its
    old modification time restored is still hashed again.
    """
    st = path.stat()
    return [st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns]


def _store() -> Path:
    return cache_dir() / "sha256.json"


def _load_store() -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(_store().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save_store(new: dict[str, dict[str, Any]]) -> None:
    """Merge `new` into the on-disk store atomically; a cache that cannot be written is skipped."""
    try:
        data = {**_load_store(), **new}
        if len(data) > _STORE_LIMIT:
            data = dict(list(data.items())[-_STORE_LIMIT:])
        folder = cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".sha256.", suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, _store())
    except OSError:
        pass


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file.

    Hashing a model's weights costs about a second per GB, on every run and resume, so digests
    are cached by (resolved path, size, inode, mtime, ctime) — in this process and in
    `cache_dir()/sha256.json` across runs. Any write to the file changes its ctime, so a stale
    digest is never used; a store that cannot be read or written only costs the hashing.
    """
    name = str(path.resolve())
    key = _stat_key(path)
    hit = _CACHE.get(name)
    if hit is None or hit.get("stat") != key:
        big = key[0] >= 1 << 20  # only files worth the bookkeeping (weights), not configs
        stored = _load_store().get(name) if big else None
        if isinstance(stored, dict) and stored.get("stat") == key and isinstance(stored.get("sha256"), str):
            hit = stored
        else:
            digest = hashlib.sha256()
            with path.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            hit = {"stat": key, "sha256": digest.hexdigest()}
            if big:
                _save_store({name: hit})
        _CACHE[name] = hit
    return str(hit["sha256"])


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
    axes = sweeps.axis_values(cfg.experiment.sweep)
    for iv in cfg.experiment.interventions:
        bound = dict(iv._refs)  # a swept file: every value of its axis
        contrast = iv.contrast.file if iv.contrast is not None else None
        refs = [(("vector",), iv.vector), (("bundle",), iv.bundle), (("contrast", "file"), contrast)]
        for path, ref in refs:
            for value in (axes.get(bound[path]) or []) if path in bound else [ref]:
                if isinstance(value, str) and not value.startswith("$"):
                    out.update(_reference(cfg, value))
    for entry in cfg.experiment.saes:  # SAEs (`saes:` and interventions' own `sae:` directories)
        out.update(_reference(cfg, entry.path))
    names = {entry.name for entry in cfg.experiment.saes}
    for iv in cfg.experiment.interventions:
        if iv.sae is not None and iv.sae not in names:
            out.update(_reference(cfg, iv.sae))
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
