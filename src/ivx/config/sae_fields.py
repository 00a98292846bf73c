"""The schema of SAE sites: `saes:` entries, `feature:`, and the checks of an intervention's SAE fields.

An intervention with `sae:` acts on the features of a sparse autoencoder at its site instead of
on the raw activation (see docs/saes.md): `feature` (an index, a list, `all`, or a `$axis`) or
`top: k` picks the features, `sae_error` keeps (default) or drops the reconstruction error. The
checks here read the raw YAML, so they report every problem at its own line. Pure data, no torch.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, Field

from ivx.config.settings import Strict
from ivx.config.sweep import is_ref

SAE_KINDS = ("vanilla", "zero", "set", "scale", "addition", "collect")
# intervention fields that act on raw activation dimensions and mean nothing on features
_NOT_WITH_SAE = ("subspace", "head", "vector", "contrast", "sever", "receivers")


class SaeEntry(Strict):
    """One entry of `saes:`: a sparse autoencoder interventions refer to by name."""

    name: str = Field(min_length=1, description="What interventions write in `sae:`.")
    path: str = Field(
        min_length=1,
        description="Directory in SAELens's layout (cfg.json + sae_weights.safetensors), relative to "
        "the config file, or hf://user/name[/subdir][@revision].",
    )


def _check_feature(value: Any) -> Any:
    if value is None or value == "all" or is_ref(value):
        return value
    items = value if isinstance(value, list) else [value]
    if not items or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in items):
        raise ValueError(
            f"feature {value!r} must be a feature index (0 or more), a non-empty list of them, or 'all'"
        )
    return value


Feature = Annotated[Any, AfterValidator(_check_feature)]

Found = list[tuple[tuple[Any, ...], str]]  # (YAML path, message) pairs


def _entry_problems(raw: dict[str, Any]) -> tuple[Found, set[str]]:
    found: Found = []
    names: set[str] = set()
    entries = raw.get("saes")
    for j, entry in enumerate(entries if isinstance(entries, list) else []):
        name = entry.get("name") if isinstance(entry, dict) else None
        if isinstance(name, str):
            if name in names:
                found.append((("saes", j, "name"), f"SAE name {name!r} is given twice"))
            names.add(name)
    return found, names


def _iv_problems(i: int, iv: dict[str, Any]) -> Found:
    """Problems of one intervention's SAE fields (its kind known and not a `$axis`)."""
    at: tuple[Any, ...] = ("interventions", i)
    kind = iv.get("kind")
    found: Found
    if iv.get("sae") is None:
        unused = [f for f in ("feature", "top", "sae_error") if f in iv]
        found = [
            ((*at, f), f"`{f}` needs `sae:` (the sparse autoencoder whose features it picks)") for f in unused
        ]
        if kind == "set" and "value" in iv:
            found.append(((*at, "value"), "set reads `value` only with `sae:` (a feature's clamped value)"))
        return found
    found = [
        ((*at, f), f"`{f}` acts on raw activation dimensions; an intervention with `sae:` acts on features")
        for f in _NOT_WITH_SAE
        if iv.get(f) is not None
    ]
    if isinstance(kind, str) and not is_ref(kind) and kind not in SAE_KINDS:
        found.append(
            ((*at, "kind"), f"kind {kind!r} does not act on SAE features; use one of {', '.join(SAE_KINDS)}")
        )
    if "feature" in iv and "top" in iv:
        found.append(((*at, "top"), "give `feature` or `top`, not both"))
    elif "feature" not in iv and "top" not in iv and kind != "collect":
        found.append(
            ((*at, "sae"), "name the features to edit: `feature: 12`, a list, `all`, a $axis, or `top: k`")
        )
    if kind in ("set", "scale") and iv.get("value") is None:
        found.append(((*at, "value"), f"kind {kind} on SAE features needs `value`"))
    return found


def problems(raw: dict[str, Any]) -> Found:
    """Every problem of the `saes:` list and of the interventions' SAE fields, located."""
    found, _ = _entry_problems(raw)
    ivs = raw.get("interventions")
    for i, iv in enumerate(ivs if isinstance(ivs, list) else []):
        if isinstance(iv, dict):
            found += _iv_problems(i, iv)
    return found


def resolve_name(ref: str, saes: list[SaeEntry]) -> str:
    """The path of an intervention's `sae:` (an entry's name in `saes:`, or the path itself)."""
    for entry in saes:
        if entry.name == ref:
            return entry.path
    return ref
