"""A model's structure without building it: what `ivx validate` learns once per model revision.

Building a model on the meta device means importing transformers' model code (~10 s on a 2-core
machine) for facts that never change for one config.json: the module tree, the parameter counts
and the config's values. The first meta build records them in the user cache
(`$IVX_CACHE_DIR`, else `$XDG_CACHE_HOME/ivx`, else `~/.cache/ivx`), keyed on the sha256 of
config.json and the transformers and ivx versions (the meta model is built from config.json
alone, so nothing else can change it); later checks read the record instead. `Skeleton` answers
exactly what the record holds — module names, `get_submodule`, `named_modules`, `parameters`,
`get_input_embeddings`, config values — and builds the real meta model the first time anything
else is asked of it, of one of its modules or of a parameter, so a check the record does not
cover still gets the true answer. Models
whose layout has no row in `layouts.LAYOUTS`, multimodal configs and `trust_remote_code` models
are never recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from ivx.core.version import VERSION
from ivx.model import patterns
from ivx.model.layouts import LAYOUTS
from ivx.store import fingerprint

FORMAT = 5  # 5: MoE components (router_logits, experts_output) found from the recorded tree
# config attributes ivx reads by name (components.describe, checks.max_positions, ...); every
# other recorded value comes from config.to_dict() and the config class's aliases
PROBES = (
    "model_type", "text_config", "num_hidden_layers", "n_layer", "num_layers", "hidden_size", "n_embd",
    "d_model", "num_attention_heads", "n_head", "num_key_value_heads", "head_dim", "intermediate_size",
    "n_inner", "ffn_dim", "vocab_size", "max_position_embeddings", "n_positions", "n_ctx", "seq_length",
    "use_parallel_residual", "tie_word_embeddings", "embedding_size", "input_embedding_size",
)  # fmt: skip
_ABSENT = {"__ivx_absent__": True}  # recorded for an attribute the config does not have


def config_file(path: str, revision: str | None) -> Path | None:
    """config.json of a local model directory, or of a Hub model already in the local cache."""
    local = Path(path) / "config.json"
    if local.is_file():
        return local
    if Path(path).is_dir():
        return None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(path, "config.json", revision=revision)
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def key(config: Path) -> str | None:
    """The record's name: config.json's bytes and the versions that build the model from it."""
    try:
        transformers = metadata.version("transformers")
        text = config.read_bytes()
    except (OSError, metadata.PackageNotFoundError):
        return None
    digest = hashlib.sha256(text + f"\0{transformers}\0{VERSION}\0{FORMAT}".encode()).hexdigest()
    return digest[:32]


def read(name: str) -> dict[str, Any] | None:
    """The record `name`, or None when there is none or it cannot be read."""
    try:
        data = json.loads((fingerprint.cache_dir() / "skeletons" / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def write(name: str, data: dict[str, Any]) -> None:
    """Keep a record (atomically; a cache that cannot be written is skipped)."""
    folder = fingerprint.cache_dir() / "skeletons"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{name}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(data))
        os.replace(tmp, folder / f"{name}.json")
    except OSError:
        return


def _plain(value: Any) -> bool:
    """A value that survives JSON unchanged (no tuples, no objects)."""
    if value is None or isinstance(value, bool | int | float | str):
        return True
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def record(model: Any) -> dict[str, Any] | None:
    """What a meta model's structure is, as JSON data; None for a model ivx does not record."""
    config = model.config
    if getattr(config, "text_config", None) is not None or getattr(config, "model_type", None) not in LAYOUTS:
        return None
    values = {k: v for k, v in config.to_dict().items() if _plain(v)}
    for alias in [*getattr(config, "attribute_map", {}), *PROBES]:
        value = getattr(config, alias, _ABSENT)
        if value is _ABSENT or _plain(value):
            values[alias] = value
    index: dict[int, int] = {}
    numels: list[int] = []
    names: list[str] = []  # each parameter's first dotted name
    modules = []
    listed = list(model.named_modules(remove_duplicate=False))
    if len({id(m) for _, m in listed}) != len(listed):
        return None  # a module shared by two parents: named_modules would list it once
    for name, module in listed:
        own = []
        for own_name, param in module.named_parameters(recurse=False, remove_duplicate=False):
            if id(param) not in index:
                index[id(param)] = len(numels)
                numels.append(int(param.numel()))
                names.append(f"{name}.{own_name}" if name else own_name)
            own.append(index[id(param)])
        modules.append([name, own])
    embedding = next(n for n, m in model.named_modules() if m is model.get_input_embeddings())
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    row = LAYOUTS[config.model_type]
    try:
        attention = model.get_submodule(f"{row.blocks}.0.{row.attn}")
    except AttributeError:
        return None  # not the table's layout after all: components falls back, nothing to record
    return {
        "format": FORMAT,
        "config": values,
        "modules": modules,
        "numels": numels,
        "names": names,
        "embedding": embedding,
        "dtype": dtype,
        "attention_interface": patterns.supported(attention),
    }


class Param:
    """A parameter of the record: its element count; anything else is the real one's."""

    def __init__(self, numel: int, name: str, real: Callable[[], Any]) -> None:
        self._numel = numel
        self._name = name
        self._real = real

    def numel(self) -> int:
        """Elements, as torch's `Parameter.numel`."""
        return self._numel

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._real().get_parameter(self._name), name)


class Node:
    """One module of the record: its children in order and its own parameters. Anything else
    asked of it is answered by the same module of the real meta model."""

    def __init__(
        self, path: str, params: list[int], table: tuple[list[int], list[str]], real: Callable[[], Any]
    ) -> None:
        self._path = path
        self._kids: dict[str, Node] = {}
        self._params = params
        self._numels, self._names = table  # every parameter's element count and name, shared by the tree
        self._real = real  # the real meta model, built on first call

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Node]]:
        """(name, module) of this module and every module below it, as torch orders them."""
        yield prefix, self
        for name, kid in self._kids.items():
            yield from kid.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_children(self) -> Iterator[tuple[str, Node]]:
        """(name, module) of the modules directly below this one, in order."""
        return iter(self._kids.items())

    def children(self) -> Iterator[Node]:
        """The modules directly below this one, in order."""
        return iter(self._kids.values())

    def get_submodule(self, target: str) -> Node:
        """The module at a dotted path; AttributeError when there is none (as torch)."""
        node = self
        for part in target.split(".") if target else []:
            if part not in node._kids:
                raise AttributeError(f"{node._path or 'model'} has no attribute `{part}`")
            node = node._kids[part]
        return node

    def parameters(self) -> Iterator[Param]:
        """Every parameter of this module and below once (tied weights once), as torch's."""
        seen: set[int] = set()
        for _, node in self.named_modules():
            for i in node._params:
                if i not in seen:
                    seen.add(i)
                    yield Param(self._numels[i], self._names[i], self._real)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._real().get_submodule(self._path), name)

    def __len__(self) -> int:
        return len(self._kids)

    def __iter__(self) -> Iterator[Node]:
        return iter(self._kids.values())


class Config:
    """The recorded config values; an attribute the record lacks is read from the real config."""

    def __init__(self, values: dict[str, Any], real: Callable[[], Any]) -> None:
        self._values = values
        self._real = real

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._values:
            if self._values[name] == _ABSENT:
                raise AttributeError(name)
            return self._values[name]
        return getattr(self._real().config, name)


class Skeleton(Node):
    """A model's structure from its record; the real meta model is built on first need."""

    def __init__(self, data: dict[str, Any], build: Callable[[], Any]) -> None:
        super().__init__("", [], (data["numels"], data["names"]), self.real)
        self._build = build
        self._model: Any = None
        nodes: dict[str, Node] = {"": self}
        for name, params in data["modules"]:
            if name == "":
                self._params = params
                continue
            parent, _, leaf = name.rpartition(".")
            table = (self._numels, self._names)
            nodes[name] = nodes[parent]._kids.setdefault(leaf, Node(name, params, table, self.real))
        self._embedding = nodes[data["embedding"]]
        self.config = Config(data["config"], self.real)
        self.recorded_dtype: str = data["dtype"]  # the meta model's parameter dtype, by name
        self.hf_device_map = None  # a model built from its config alone is never sharded
        # whether its attention dispatches through transformers' interface (pattern sites)
        self.attention_interface: bool = data["attention_interface"]

    def real(self) -> Any:
        """The real meta model (built once, on the first question the record cannot answer)."""
        if self._model is None:
            self._model = self._build()
        return self._model

    def get_input_embeddings(self) -> Node:
        """The input embedding module."""
        return self._embedding


class MetaDevice:
    """`torch.device("meta")` for a model that was never built (no torch import needed)."""

    type = "meta"
    index = None

    def __str__(self) -> str:
        return "meta"

    def __repr__(self) -> str:
        return "device(type='meta')"


def structure(
    path: str, revision: str | None, trusted: bool, build: Callable[[], tuple[Any, Any]]
) -> tuple[Any, Any]:
    """(model, device) for structural checks: the recorded Skeleton when this config.json has a
    record, else `build()` (the real meta model), recorded for next time."""
    config = None if trusted else config_file(path, revision)
    name = key(config) if config is not None else None
    data = read(name) if name is not None else None
    if data is not None:
        return Skeleton(data, lambda: build()[0]), MetaDevice()
    model, dev = build()
    if name is not None:
        data = record(model)
        if data is not None:
            write(name, data)
    return model, dev


GPU_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")  # NVIDIA, ROCm, WSL


def cuda_available() -> bool:
    """`torch.cuda.is_available()`, without importing torch where no GPU driver exposes a device."""
    import sys

    if "torch" not in sys.modules and not any(os.path.exists(node) for node in GPU_NODES):
        return False
    import torch

    return bool(torch.cuda.is_available())
