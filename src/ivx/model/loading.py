"""Load a causal LM and its tokenizer: bundled (ivx-toy), a local directory, or a Hub id."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ivx.core import startup
from ivx.core.errors import UserError
from ivx.model import skeleton
from ivx.model.components import ModelInfo, describe

if TYPE_CHECKING:
    import torch

ASSETS = Path(__file__).parents[1] / "assets"
BUNDLED: dict[str, Path] = {"ivx-toy": ASSETS / "ivx-toy"}
DTYPES = ("auto", "float32", "float16", "bfloat16")
GPU_EXTRA = "pip install 'ivx-interventions[gpu]'  (or, in a checkout: pip install -e \".[gpu]\")"
DeviceMap = Literal["auto"] | dict[str, str | int]


class ModelLoadError(UserError):
    """A model that cannot be loaded, with what to do about it."""


class MetaUnsupported(ModelLoadError):
    """The model's structure cannot be built without its weights (its own init code needs data)."""


@dataclass
class LoadedModel:
    """A model ready for interventions: eval mode, with its description."""

    model: Any
    tokenizer: Any
    info: ModelInfo
    name: str
    revision: str | None
    path: str
    device: torch.device
    dtype: torch.dtype


def resolve_path(name: str) -> str:
    """Bundled name → its directory; an existing local directory → itself; else a Hub id."""
    if name in BUNDLED:
        path = BUNDLED[name]
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"the bundled model {name!r} is missing from this installation ({path}); "
                "reinstall ivx-interventions or retrain it with `ivx toy train --out DIR`"
            )
        return str(path)
    expanded = Path(os.path.expanduser(name))
    if expanded.is_dir():
        if not (expanded / "config.json").is_file():
            raise ModelLoadError(f"{expanded} is a directory but has no config.json (not a saved HF model)")
        return str(expanded)
    if name.startswith((".", "/", "~")):
        raise ModelLoadError(f"model directory {name!r} does not exist")
    return name


def _hub_error(name: str, exc: Exception) -> ModelLoadError:
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if offline:
        why = "HF_HUB_OFFLINE is set and it is not in the local cache"
    elif not _REACHABLE.get(endpoint, True):
        why = f"it is not in the local Hugging Face cache and the Hub ({endpoint}) cannot be reached"
    else:
        why = "it is not in the local Hugging Face cache and the Hub could not be reached or does not have it"
    return ModelLoadError(
        f"cannot load model {name!r}: {why} ({type(exc).__name__}). Point the config at a local copy "
        f"(`model: {{name: /path/to/saved/model}}`, a directory made by save_pretrained), use the bundled "
        f"`ivx-toy`, or run once with Hub access so it is cached."
    )


_REACHABLE: dict[str, bool] = {}


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub endpoint (HF_ENDPOINT) opens: one quick probe per
    process, so an offline machine gets its error at once instead of after minutes of retries."""
    import socket
    from urllib.parse import urlparse

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    proxies = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
    if any(os.environ.get(name) for name in proxies):
        return True  # a proxy decides what is reachable: let the Hub client try
    if endpoint not in _REACHABLE:
        url = urlparse(endpoint)
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            with socket.create_connection((url.hostname or "", port), timeout=timeout):
                _REACHABLE[endpoint] = True
        except OSError:
            _REACHABLE[endpoint] = False
    return _REACHABLE[endpoint]


def _from_pretrained(loader: Any, path: str, **kwargs: Any) -> Any:
    """Offline-first: the local cache, then the Hub."""
    if Path(path).is_dir():
        try:
            return loader.from_pretrained(path, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a broken local copy: say which and why
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"cannot load {loader.__name__} from {path}: {first}") from None
    try:
        return loader.from_pretrained(path, local_files_only=True, **kwargs)
    except Exception as exc:  # noqa: BLE001 - not cached: try the Hub below
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") or not hub_reachable():
            raise _hub_error(path, exc) from None
    try:
        return loader.from_pretrained(path, **kwargs)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one clear message
        raise _hub_error(path, exc) from None


def load_config(name: str, revision: str | None = None, trust_remote_code: bool = False) -> Any:
    """The model's config only (no weights)."""
    from transformers import AutoConfig

    path = resolve_path(name)
    return _from_pretrained(AutoConfig, path, revision=revision, trust_remote_code=trust_remote_code)


def _tokenizer_class(path: str) -> Any:
    """Respect a saved generic fast tokenizer (AutoTokenizer may swap in a model-specific class);
    AutoTokenizer, which imports torch, only when it decides."""
    import json

    config = Path(path) / "tokenizer_config.json"
    name = None
    if config.is_file() and (Path(path) / "tokenizer.json").is_file():
        try:
            name = json.loads(config.read_text()).get("tokenizer_class")
        except (OSError, ValueError):
            name = None
    with startup.timed("imports"):
        if name in ("PreTrainedTokenizerFast", "TokenizersBackend"):
            from transformers import PreTrainedTokenizerFast

            return PreTrainedTokenizerFast
        from transformers import AutoTokenizer

        return AutoTokenizer


def _device(device: str) -> torch.device:
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but CUDA is not available on this machine")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError("device 'mps' requested but MPS is not available on this machine")
    return torch.device(device)


def _placement(device_map: DeviceMap | None) -> dict[str, Any]:
    """from_pretrained arguments that shard the model with accelerate (none without a device_map)."""
    if device_map is None:
        return {}
    import importlib.util

    if importlib.util.find_spec("accelerate") is None:
        raise ModelLoadError(f"model.device_map needs accelerate, which is not installed: {GPU_EXTRA}")
    placed: dict[str, Any] = {"device_map": device_map}
    if device_map == "auto" or "disk" in device_map.values():
        import atexit
        import shutil
        import tempfile

        # weights that fit on no device are offloaded here and read back layer by layer
        folder = tempfile.mkdtemp(prefix="ivx-offload-")
        atexit.register(shutil.rmtree, folder, True)
        placed["offload_folder"] = folder
    return placed


def input_device(model: Any) -> torch.device:
    """Where input ids go: the input embedding's execution device (accelerate's, when offloaded)."""
    import torch

    embedding = model.get_input_embeddings()
    hook = getattr(embedding, "_hf_hook", None)
    execution = getattr(hook, "execution_device", None)
    if execution is not None:
        return torch.device(execution if not isinstance(execution, int) else f"cuda:{execution}")
    return torch.device(embedding.weight.device)


def _weights_dtype(dtype: str, dev: torch.device | None) -> Any:
    """The torch dtype to load weights in: auto is float32 on a CPU, the checkpoint's elsewhere
    (None without a device: only check the name)."""
    if dtype not in DTYPES:
        raise ModelLoadError(f"dtype {dtype!r} must be one of {', '.join(DTYPES)}")
    if dev is None:
        return None
    import torch

    if dtype == "auto":
        return torch.float32 if dev.type == "cpu" else "auto"
    return getattr(torch, dtype)


def load(
    name: str,
    revision: str | None = None,
    dtype: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
    device_map: DeviceMap | None = None,
    weights: bool = True,
) -> LoadedModel:
    """Load model + tokenizer in eval mode; the pad token defaults to eos.

    `weights=False` builds the model's modules on the meta device from its config alone (no
    weight file is read or downloaded): enough for every structural check `ivx validate` makes.
    `device_map` shards the model over devices with accelerate and replaces `device`.
    """
    with startup.timed("model_load"):
        return _load(name, revision, dtype, device, trust_remote_code, device_map, weights)


def _load(
    name: str,
    revision: str | None,
    dtype: str,
    device: str,
    trust_remote_code: bool,
    device_map: DeviceMap | None,
    weights: bool,
) -> LoadedModel:
    """`load`, timed by its caller (importing transformers counts as imports)."""
    with startup.timed("imports"):
        from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # ivx reports problems itself; keep stderr for progress
    hf_logging.disable_progress_bar()
    path = resolve_path(name)
    # structure only, on a CPU: no torch needed to know the device is fine
    dev = _device(device) if weights or device not in ("auto", "cpu") else None
    torch_dtype = _weights_dtype(dtype, dev if weights else None)
    kwargs = {"revision": revision, "trust_remote_code": trust_remote_code}
    tokenizer = _from_pretrained(_tokenizer_class(path), path, **kwargs)
    model: Any
    if weights and dev is not None:
        model, dev = _weighted(path, dev, torch_dtype, device_map, kwargs)
    else:
        build = lambda: _meta_model(name, path, revision, trust_remote_code)  # noqa: E731
        model, dev = skeleton.structure(path, revision, trust_remote_code, build)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        info=describe(model),
        name=name,
        revision=revision,
        path=path,
        device=dev,
        dtype=getattr(model, "recorded_dtype", None) or next(model.parameters()).dtype,
    )


def _weighted(
    path: str, dev: torch.device, torch_dtype: Any, device_map: DeviceMap | None, kwargs: dict[str, Any]
) -> tuple[Any, torch.device]:
    """(model, input device): the weights loaded, placed and in eval mode."""
    with startup.timed("imports"):
        from transformers import AutoModelForCausalLM
    placed = _placement(device_map)
    try:
        model = _from_pretrained(AutoModelForCausalLM, path, dtype=torch_dtype, **placed, **kwargs)
    except ModelLoadError as refused:
        mapped = _text_half(path, kwargs)
        if mapped is None:
            raise refused from None
        model = _from_pretrained(mapped, path, dtype=torch_dtype, **placed, **kwargs)
    # eval mode; parameters keep requires_grad: ivx runs under inference_mode, and on CPU (torch
    # 2.13) a forward with frozen parameters measured ~35% slower. `ivx train` freezes them itself.
    if placed:
        dev = input_device(model)
    else:
        model.to(dev)
    model.eval()
    return model, dev


def text_half_class(config: Any) -> Any | None:
    """The causal-LM class for a config AutoModelForCausalLM does not map, or None: a multimodal
    model's text half saved by its own causal-LM class (Emu3ForCausalLM saves `emu3_text_model`,
    MllamaForCausalLM `mllama_text_model`, which transformers maps only as `emu3` / `mllama`)."""
    import transformers
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING,
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    )

    if type(config) in MODEL_FOR_CAUSAL_LM_MAPPING or getattr(config, "auto_map", None):
        return None
    mapped = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, name, None) if name in mapped else None
        if cls is not None and getattr(cls, "config_class", None) is type(config):
            return cls
    return None


def _text_half(path: str, kwargs: dict[str, Any]) -> Any | None:
    """`text_half_class` of the checkpoint at `path` (None when even its config does not load)."""
    try:
        return text_half_class(load_config(path, kwargs["revision"], kwargs["trust_remote_code"]))
    except ModelLoadError:
        return None


def _meta_model(
    name: str, path: str, revision: str | None, trust_remote_code: bool
) -> tuple[Any, torch.device]:
    """The model's modules on the meta device, built from its config alone (eval mode)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = _from_pretrained(AutoConfig, path, revision=revision, trust_remote_code=trust_remote_code)
    dev = torch.device("meta")
    try:
        with dev:
            mapped = text_half_class(config)
            if mapped is not None:
                model = mapped._from_config(config)
            else:
                model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - some custom inits touch tensor data
        raise MetaUnsupported(
            f"cannot build {name!r} from its config alone ({type(exc).__name__}: {exc}); "
            "check it with its weights (`ivx validate --weights`)"
        ) from None
    model.eval()
    return model, dev


def load_spec(spec: Any, weights: bool = True) -> LoadedModel:
    """`load` with every setting of a config's `model:` section (schema.ModelSpec)."""
    return load(
        spec.name, spec.revision, spec.dtype, spec.device, spec.trust_remote_code, spec.device_map, weights
    )


def placement(lm: LoadedModel) -> str:
    """The device for the manifest: `cuda:0`, or for a sharded model its devices in map order
    (`cuda:0,cuda:1,disk`)."""
    placed = getattr(lm.model, "hf_device_map", None)
    if not placed:
        return str(lm.device)
    names = [f"cuda:{where}" if isinstance(where, int) else str(where) for where in placed.values()]
    return ",".join(dict.fromkeys(names))
