"""SAELens cfg.json keys and tensor names → the fields of an `ivx.model.sae.SAE` (and back).

SAELens has spelled its config three ways: the first releases (`hook_point`, `hook_point_layer`,
`activation_fn` ...), 1.x–5.x (`hook_name`, `hook_layer`, `activation_fn_str` = relu | topk with
`activation_fn_kwargs.k`, `architecture` = standard | gated | jumprelu), and 6.x (`architecture`
= standard | topk | batchtopk | jumprelu | gated with `k` at the top and the hook under `metadata`
or `meta`). `fields` reads all three; `cfg_of` writes the 6.x spelling plus the 1.x–5.x keys, so
both old and new SAELens read what ivx writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ivx.store.sae_files import CFG, WEIGHTS, SAEFileError

if TYPE_CHECKING:
    import torch

Architecture = Literal["standard", "jumprelu", "topk", "batchtopk", "gated"]
ARCHITECTURES: tuple[str, ...] = ("standard", "jumprelu", "topk", "batchtopk", "gated")
NORMALIZATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")

# tensor name → its shape in terms of (d_in, d_sae); which architectures need it
SHAPES: dict[str, tuple[str, ...]] = {
    "W_enc": ("d_in", "d_sae"),
    "b_enc": ("d_sae",),
    "W_dec": ("d_sae", "d_in"),
    "b_dec": ("d_in",),
    "threshold": ("d_sae",),
    "b_gate": ("d_sae",),
    "r_mag": ("d_sae",),
    "b_mag": ("d_sae",),
}
REQUIRED: dict[str, tuple[str, ...]] = {
    "standard": ("W_enc", "b_enc", "W_dec", "b_dec"),
    "topk": ("W_enc", "b_enc", "W_dec", "b_dec"),
    "jumprelu": ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"),
    "batchtopk": ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"),
    "gated": ("W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec"),
}


def lookup(cfg: dict[str, Any], *keys: str) -> Any:
    """The first of `keys` present in cfg, or in its nested `metadata` / `meta` (None if absent)."""
    for scope in (cfg, cfg.get("metadata"), cfg.get("meta")):
        if isinstance(scope, dict):
            for key in keys:
                if scope.get(key) is not None:
                    return scope[key]
    return None


def _architecture(cfg: dict[str, Any], where: str) -> str:
    arch = cfg.get("architecture") or "standard"
    act = cfg.get("activation_fn_str") or cfg.get("activation_fn")
    if arch == "standard" and act == "topk":  # 1.x–5.x TopK SAEs
        arch = "topk"
    if arch not in ARCHITECTURES:
        known = ", ".join(ARCHITECTURES)
        raise SAEFileError(f"{where}  architecture: {arch!r} is not supported; known: {known}")
    if act not in (None, "relu", "topk"):
        raise SAEFileError(f"{where}  activation_fn_str: {act!r} is not supported; ivx reads relu and topk")
    return str(arch)


def _int(cfg: dict[str, Any], key: str, where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value) or value <= 0:
        raise SAEFileError(f"{where}  {key}: expected a positive integer, found {value!r}")
    return int(value)


def dims(cfg: dict[str, Any], where: str) -> tuple[int, int]:
    """(d_in, d_sae) of a cfg.json dict (SAEFileError naming `where` and the field if wrong)."""
    if cfg.get("d_in") is None:
        raise SAEFileError(f"{where}  d_in: missing (the width of the activation the SAE reads)")
    d_in = _int(cfg, "d_in", where, cfg["d_in"])
    if cfg.get("d_sae") is None and cfg.get("expansion_factor") is not None:
        return d_in, d_in * _int(cfg, "expansion_factor", where, cfg["expansion_factor"])
    if cfg.get("d_sae") is None:
        raise SAEFileError(f"{where}  d_sae: missing (the number of features)")
    return d_in, _int(cfg, "d_sae", where, cfg["d_sae"])


def hook(cfg: dict[str, Any], where: str) -> tuple[str, int | None]:
    """(hook_name, hook_layer or None) of a cfg.json dict, in any SAELens spelling."""
    name = lookup(cfg, "hook_name", "hook_point")
    if not isinstance(name, str) or not name:
        raise SAEFileError(
            f"{where}  hook_name: missing; the SAE must say where it reads (a TransformerLens name "
            "such as blocks.2.hook_resid_post)"
        )
    head = lookup(cfg, "hook_head_index", "hook_point_head_index")
    if head is not None:
        raise SAEFileError(f"{where}  hook_head_index: {head!r}: per-head SAEs are not supported")
    layer = lookup(cfg, "hook_layer", "hook_point_layer")
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int) or layer < 0):
        raise SAEFileError(f"{where}  hook_layer: expected a layer number (0 or more), found {layer!r}")
    return name, layer


def _k(cfg: dict[str, Any], arch: str, where: str) -> float | None:
    kwargs = cfg.get("activation_fn_kwargs") or {}
    k = cfg.get("k", kwargs.get("k") if isinstance(kwargs, dict) else None)
    if arch == "topk":
        if k is None:
            raise SAEFileError(f"{where}  k: missing; a topk SAE keeps its k largest features")
        return float(_int(cfg, "k", where, k))
    if arch == "batchtopk" and k is not None:
        if isinstance(k, bool) or not isinstance(k, int | float) or k <= 0:
            raise SAEFileError(f"{where}  k: expected a positive number, found {k!r}")
        return float(k)
    return None


def _check_tensors(tensors: dict[str, torch.Tensor], arch: str, d_in: int, d_sae: int, where: str) -> None:
    dims = {"d_in": d_in, "d_sae": d_sae}
    missing = [n for n in REQUIRED[arch] if n not in tensors]
    if missing:
        raise SAEFileError(
            f"{where}  {missing[0]}: missing tensor; a {arch} SAE needs {', '.join(REQUIRED[arch])} "
            f"(found {', '.join(sorted(tensors)) or 'none'})"
        )
    for name in REQUIRED[arch]:
        want = tuple(dims[d] for d in SHAPES[name])
        got = tuple(tensors[name].shape)
        if got != want:
            shape = ", ".join(f"{d}={dims[d]}" for d in SHAPES[name])
            raise SAEFileError(f"{where}  {name}: shape {list(got)}, expected {list(want)} ({shape})")
        if not tensors[name].is_floating_point():
            raise SAEFileError(f"{where}  {name}: dtype {tensors[name].dtype}, expected a float tensor")


def fields(cfg: dict[str, Any], tensors: dict[str, torch.Tensor], directory: Path) -> dict[str, Any]:
    """The SAE's constructor arguments from a cfg.json dict and its tensors (SAEFileError if wrong)."""
    where = str(directory / CFG)
    arch = _architecture(cfg, where)
    d_in, d_sae = dims(cfg, where)
    hook_name, hook_layer = hook(cfg, where)
    norm = cfg.get("normalize_activations") or "none"
    if norm not in NORMALIZATIONS:
        raise SAEFileError(f"{where}  normalize_activations: {norm!r}; known: {', '.join(NORMALIZATIONS)}")
    if cfg.get("reshape_activations") not in (None, "none", "hook_z"):
        bad = cfg["reshape_activations"]
        raise SAEFileError(f"{where}  reshape_activations: {bad!r}; known: none, hook_z")
    k = _k(cfg, arch, where)
    _check_tensors(tensors, arch, d_in, d_sae, str(directory / WEIGHTS))
    W_dec = tensors["W_dec"]
    if "scaling_factor" in tensors and cfg.get("finetuning_scaling_factor"):  # 2.x–3.x finetuning
        W_dec = W_dec * tensors["scaling_factor"][:, None]  # [d_sae, d_in]
    return {
        "cfg": cfg,
        "architecture": arch,
        "d_in": d_in,
        "d_sae": d_sae,
        "W_enc": tensors["W_enc"],
        "b_enc": tensors.get("b_enc"),
        "W_dec": W_dec,
        "b_dec": tensors["b_dec"],
        "hook_name": hook_name,
        "hook_layer": hook_layer,
        "apply_b_dec_to_input": bool(cfg.get("apply_b_dec_to_input", True)),
        "normalize_activations": norm,
        "norm_scaling_factor": float(cfg.get("norm_scaling_factor") or 1.0),
        "rescale_acts_by_decoder_norm": bool(cfg.get("rescale_acts_by_decoder_norm", False)),
        "threshold": tensors.get("threshold"),
        "k": k,
        "b_gate": tensors.get("b_gate"),
        "r_mag": tensors.get("r_mag"),
        "b_mag": tensors.get("b_mag"),
        "source": str(directory),
    }


def cfg_of(sae: Any) -> dict[str, Any]:
    """cfg.json for an SAE: its cfg as read, with the fields ivx uses in SAELens's spellings."""
    cfg = {k: v for k, v in sae.cfg.items() if k not in ("metadata", "meta")}
    meta = dict(sae.cfg.get("metadata") or sae.cfg.get("meta") or {})
    meta.update(hook_name=sae.hook_name, hook_layer=sae.hook_layer)
    cfg.update(
        architecture=sae.architecture,
        d_in=sae.d_in,
        d_sae=sae.d_sae,
        dtype=str(sae.W_enc.dtype).removeprefix("torch."),
        apply_b_dec_to_input=sae.apply_b_dec_to_input,
        normalize_activations=sae.normalize_activations,
        hook_name=sae.hook_name,
        hook_layer=sae.hook_layer,
        metadata=meta,
    )
    if sae.rescale_acts_by_decoder_norm:
        cfg["rescale_acts_by_decoder_norm"] = True
    if sae.norm_scaling_factor != 1.0:
        cfg["norm_scaling_factor"] = sae.norm_scaling_factor
    if sae.k is not None:
        k = int(sae.k) if float(sae.k).is_integer() else sae.k
        cfg.update(k=k, activation_fn_kwargs={"k": k})
    cfg["activation_fn_str"] = "topk" if sae.architecture == "topk" else "relu"
    cfg.pop("finetuning_scaling_factor", None)  # folded into W_dec on reading
    return cfg


def tensors_of(sae: Any) -> dict[str, torch.Tensor]:
    """The SAE's tensors under SAELens's names (only those its architecture uses)."""
    return {name: getattr(sae, name) for name in REQUIRED[sae.architecture]}
