"""Where an SAE intervention acts, decided before any forward pass (from the SAE's cfg.json only).

An intervention with `sae:` is placed by the SAE's own record (`hook_name`, a TransformerLens
name, mapped through `config.tl_names`) when its `component` / `layer` are not written; written
ones must agree with it. The SAE's `d_in` must equal the site's width, and `feature` indices must
be below its `d_sae`. Every problem names the intervention's field (file:line); no weights load.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ivx.config import tl_names
from ivx.config.sae_fields import resolve_name
from ivx.config.schema import Intervention
from ivx.config.sweep import is_ref
from ivx.model import sae as saes
from ivx.model import sae_format
from ivx.store import sae_files
from ivx.store.sae_files import SAEFileError

if TYPE_CHECKING:
    from ivx.config.loader import LoadedConfig
    from ivx.core.errors import Problem
    from ivx.model.components import ModelInfo

# components whose width is the residual stream's
_RESIDUAL = frozenset(
    {"embedding", "block_input", "block_output", "residual_mid", "attention_output", "mlp_output"}
    | {"attention_input", "mlp_input"}
)


@dataclass(frozen=True)
class SaeMeta:
    """What planning needs from an SAE: where its files are, its widths and its site."""

    ref: str  # the path or hf:// reference (a `saes:` name resolved), as written
    directory: str  # the local directory holding cfg.json
    d_in: int
    d_sae: int
    component: str | None  # None: ivx has no equivalent of its hook_name (see `problem`)
    layer: int | None
    problem: str = ""


def width(info: ModelInfo, component: str) -> int | None:
    """The width of a component's vector from the model's shape (None when not fixed)."""
    if component in _RESIDUAL:
        return info.d_model
    if component == "mlp_activation":
        return info.d_mlp
    if component in ("head_attention_value_output", "attention_value_output"):
        return info.n_heads * info.head_dim
    if component in ("query_output", "head_query_output"):
        return info.n_heads * info.head_dim
    if component in ("key_output", "value_output", "head_key_output", "head_value_output"):
        return info.n_kv_heads * info.head_dim
    return None


@lru_cache(maxsize=64)
def _meta(ref: str, base_dir: str) -> SaeMeta:
    directory = sae_files.resolve(ref, Path(base_dir))
    cfg = sae_files.read_cfg(directory)
    where = str(directory / sae_files.CFG)
    d_in, d_sae = sae_format.dims(cfg, where)
    hook_name, hook_layer = sae_format.hook(cfg, where)
    layer, hook = tl_names.split(hook_name)
    try:
        component = tl_names.component(hook)
    except ValueError as exc:
        return SaeMeta(ref, str(directory), d_in, d_sae, None, None, f"{where}  hook_name: {exc}")
    return SaeMeta(ref, str(directory), d_in, d_sae, component, hook_layer if layer is None else layer)


def meta(cfg: LoadedConfig, iv: Intervention) -> SaeMeta:
    """The SAE of an intervention (its `saes:` name resolved), read once per reference."""
    assert iv.sae is not None
    ref = resolve_name(iv.sae, cfg.experiment.saes)
    return _meta(ref, str(cfg.path.parent))


def place(
    cfg: LoadedConfig, info: ModelInfo, index: int, iv: Intervention, report: Any
) -> Intervention | None:
    """The intervention with the SAE's site filled in; None after reporting a problem."""
    try:
        found = meta(cfg, iv)
    except SAEFileError as exc:
        report("sae", str(exc))
        return None
    if found.problem or found.component is None:
        report("sae", found.problem)
        return None
    raw = _raw(cfg, index)
    component = iv.component if "component" in raw else found.component
    layer: Any = iv.layer if "layer" in raw else found.layer
    if component == "embedding" and layer is None:
        layer = 0
    ok = True
    if "component" in raw and not is_ref(raw["component"]) and component != found.component:
        report("component", f"the SAE reads {found.component} ({_hook(found)}), not {component}")
        ok = False
    if layer is None:
        report("layer", "the SAE's cfg.json gives no layer for its hook; set `layer`")
        ok = False
    elif found.layer is not None and layer not in (found.layer, found.layer - info.n_layers):
        report("layer", f"the SAE reads layer {found.layer} ({_hook(found)}), not layer {layer!r}")
        ok = False
    expected = width(info, str(component))
    if expected is None:
        report("sae", f"an SAE cannot read {component}: its width is not fixed")
        ok = False
    elif expected != found.d_in:
        report(
            "sae", f"the SAE reads {found.d_in}-wide activations (d_in) but {component} has {expected} dims"
        )
        ok = False
    features = iv.feature if isinstance(iv.feature, list) else [iv.feature]
    bad = [f for f in features if isinstance(f, int) and f >= found.d_sae]
    if bad:
        report(
            "feature",
            f"feature {bad[0]} is out of range: the SAE has {found.d_sae} features (0..{found.d_sae - 1})",
        )
        ok = False
    if iv.top is not None and iv.top > found.d_sae:
        report("top", f"top {iv.top} is more than the SAE's {found.d_sae} features")
        ok = False
    if not ok:
        return None
    return iv.model_copy(update={"component": component, "layer": layer})


def _hook(found: SaeMeta) -> str:
    return f"its hook_name in {Path(found.directory) / sae_files.CFG}"


def _raw(cfg: LoadedConfig, index: int) -> dict[str, Any]:
    ivs = cfg.raw.get("interventions") if isinstance(cfg.raw, dict) else None
    raw = ivs[index] if isinstance(ivs, list) and index < len(ivs) else {}
    return raw if isinstance(raw, dict) else {}


def features(iv: Intervention) -> tuple[int, ...] | None:
    """The feature indices of an SAE intervention (None: all features, or chosen by `top`)."""
    if iv.feature is None or iv.feature == "all":
        return None
    return tuple(iv.feature) if isinstance(iv.feature, list) else (int(iv.feature),)


def all_features(cfg: LoadedConfig, axis: str, problems: list[Problem]) -> list[int]:
    """`sweep: {axis: all}` bound to `feature`: every feature index of that intervention's SAE."""
    for i, iv in enumerate(cfg.experiment.interventions):
        if iv.sae is not None and any(a == axis and path[-1] == "feature" for path, a in iv._refs):
            try:
                return list(range(meta(cfg, iv).d_sae))
            except SAEFileError as exc:
                problems.append(cfg.problem(("interventions", i, "sae"), str(exc)))
                return []
    problems.append(
        cfg.problem(("sweep", axis), f"${axis}: all needs `feature: ${axis}` on an intervention with `sae`")
    )
    return []


def file_problems(cfg: LoadedConfig) -> list[Problem]:
    """Each SAE read whole (cfg.json and every tensor checked) before anything runs."""
    problems = []
    for i, iv in enumerate(cfg.experiment.interventions):
        if iv.sae is None or is_ref(iv.sae):
            continue
        try:
            saes.load(resolve_name(iv.sae, cfg.experiment.saes), base_dir=cfg.path.parent)
        except SAEFileError as exc:
            problems.append(cfg.problem(("interventions", i, "sae"), str(exc)))
    return problems
