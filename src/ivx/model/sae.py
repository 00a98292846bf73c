"""Sparse autoencoders (SAEs): the math, and loading / saving SAELens's on-disk layout.

Contract (parts B and C of issue 25 code against these names):

- `SAE` (frozen): `cfg` (cfg.json as read), `architecture` (standard | jumprelu | topk |
  batchtopk | gated), `d_in`, `d_sae`, `W_enc [d_in, d_sae]`, `b_enc [d_sae]` (None for gated),
  `W_dec [d_sae, d_in]`, `b_dec [d_in]`, `threshold [d_sae]` (jumprelu, batchtopk), `k`
  (topk, batchtopk), `b_gate` / `r_mag` / `b_mag [d_sae]` (gated), `hook_name` (TransformerLens
  name, e.g. `blocks.2.hook_resid_post`), `hook_layer`, `apply_b_dec_to_input`,
  `normalize_activations` (none | expected_average_only_in | constant_norm_rescale | layer_norm),
  `norm_scaling_factor` (expected_average_only_in's constant; 1 when the cfg gives none, as
  SAELens does), `rescale_acts_by_decoder_norm`, `source` (where it was loaded from).
- `sae.pre(x)` → encoder pre-activations `[..., d_sae]` (after normalisation and, when the cfg
  says so, b_dec subtraction; gated: the magnitude path). `sae.encode(x)` → features
  `[..., d_sae]`. `sae.decode(f, like=x)` → reconstruction `[..., d_in]` in the activation's own
  scale (`like` is the activation whose per-token normalisation is undone; needed only for
  constant_norm_rescale / layer_norm). `sae.delta(df, like=x)` → decode(f + df) − decode(f),
  the exact linear change (no bias). `sae.site()` → (ivx component, layer).
- `load(ref, *, base_dir=None, revision=None)` reads a directory or `hf://user/name[/subdir]`;
  `save(sae, directory)` writes cfg.json + sae_weights.safetensors; `random_sae(...)` builds
  one with seeded random weights (tests, trainer initialisation).

Placing an SAE: `ivx.plan.sae.meta(cfg, iv)` (cfg.json only: d_in, d_sae, component, layer)
and `place(...)` (fills `component` / `layer` from `hook_name`, checks widths); resolved `Edit`s
carry `sae` (the reference), `features`, `top`, `sae_error`; `ivx.engine.sae.load(ref, base_dir,
device)` gives the SAE once per process, `edit_fn(sae, edit)` the hook function.

Semantics at a site (Marks et al. 2024, "Sparse feature circuits"; SAELens's error term): x →
f = encode(x), err = x − decode(f); an edit f → f' makes the activation decode(f') + err, i.e.
x + delta(f' − f). Editing nothing changes nothing, bit for bit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ivx.config import tl_names
from ivx.model.sae_format import REQUIRED, SHAPES, Architecture, cfg_of, fields, tensors_of
from ivx.store import sae_files
from ivx.store.sae_files import SAEFileError

if TYPE_CHECKING:
    import torch

__all__ = ["SAE", "SAEFileError", "load", "random_sae", "save"]

LN_EPS = 1e-5  # SAELens's layer_norm normalisation epsilon


@dataclass(frozen=True, eq=False)
class SAE:
    """A loaded sparse autoencoder: its weights, the site it reads, and how it encodes."""

    cfg: dict[str, Any]
    architecture: Architecture
    d_in: int
    d_sae: int
    W_enc: torch.Tensor  # [d_in, d_sae]
    b_enc: torch.Tensor | None  # [d_sae]; None for gated
    W_dec: torch.Tensor  # [d_sae, d_in]
    b_dec: torch.Tensor  # [d_in]
    hook_name: str
    hook_layer: int | None = None
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    norm_scaling_factor: float = 1.0
    rescale_acts_by_decoder_norm: bool = False
    threshold: torch.Tensor | None = None  # [d_sae]
    k: float | None = None
    b_gate: torch.Tensor | None = None  # [d_sae]
    r_mag: torch.Tensor | None = None  # [d_sae]
    b_mag: torch.Tensor | None = None  # [d_sae]
    source: str = ""

    def site(self) -> tuple[str, int | None]:
        """(ivx component, layer) of the SAE's hook_name (ValueError naming it if ivx has none)."""
        layer, hook = tl_names.split(self.hook_name)
        return tl_names.component(hook), self.hook_layer if layer is None else layer

    def to(self, device: Any = None, dtype: Any = None) -> SAE:
        """The same SAE with its tensors on `device` / in `dtype`."""
        moved = {
            name: getattr(self, name).to(device=device, dtype=dtype)
            for name in SHAPES
            if getattr(self, name) is not None
        }
        return dataclasses.replace(self, **moved)

    def _stats(self, x: torch.Tensor) -> tuple[Any, Any, Any]:
        """(input multiplier, output multiplier, shift) of the normalisation for activations `x`."""
        import torch

        norm = self.normalize_activations
        if norm == "constant_norm_rescale":
            coeff = (self.d_in**0.5) / x.norm(dim=-1, keepdim=True)  # [..., 1]
            return coeff, 1 / coeff, None
        if norm == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)  # [..., 1]
            std = (x - mu).std(dim=-1, keepdim=True)  # [..., 1]
            return 1 / (std + LN_EPS), std, mu
        if norm == "expected_average_only_in" and self.norm_scaling_factor != 1.0:
            s = torch.tensor(self.norm_scaling_factor, dtype=x.dtype, device=x.device)
            return s, 1 / s, None
        return None, None, None

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.W_enc.dtype)
        in_mul, _, shift = self._stats(x)
        if shift is not None:
            x = x - shift
        if in_mul is not None:
            x = x * in_mul
        return x - self.b_dec if self.apply_b_dec_to_input else x  # [..., d_in]

    def _dec_norm(self) -> torch.Tensor:
        return self.W_dec.norm(dim=-1)  # [d_sae]

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations [..., d_sae] of activations x [..., d_in]."""
        sae_in = self._input(x)  # [..., d_in]
        if self.architecture == "gated":
            assert self.r_mag is not None and self.b_mag is not None
            return sae_in @ (self.W_enc * self.r_mag.exp()) + self.b_mag  # [..., d_sae]
        assert self.b_enc is not None
        hidden = sae_in @ self.W_enc + self.b_enc  # [..., d_sae]
        return hidden * self._dec_norm() if self.rescale_acts_by_decoder_norm else hidden

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature values [..., d_sae] of activations x [..., d_in]."""
        import torch

        hidden = self.pre(x)  # [..., d_sae]
        if self.architecture == "standard":
            return hidden.relu()
        if self.architecture in ("jumprelu", "batchtopk"):
            assert self.threshold is not None
            return hidden.relu() * (hidden > self.threshold).to(hidden.dtype)
        if self.architecture == "topk":
            assert self.k is not None
            top = hidden.topk(int(self.k), dim=-1)
            return torch.zeros_like(hidden).scatter(-1, top.indices, top.values.relu())
        assert self.b_gate is not None
        gate = (self._input(x) @ self.W_enc + self.b_gate > 0).to(hidden.dtype)  # [..., d_sae]
        return gate * hidden.relu()

    def _linear(self, f: torch.Tensor) -> torch.Tensor:
        f = f.to(self.W_dec.dtype)
        if self.rescale_acts_by_decoder_norm:
            f = f / self._dec_norm()
        return f @ self.W_dec  # [..., d_in]

    def _like(self, like: torch.Tensor | None) -> tuple[Any, Any]:
        if like is None:
            if self.normalize_activations in ("constant_norm_rescale", "layer_norm"):
                raise ValueError(
                    f"decoding a {self.normalize_activations} SAE needs the activation it encoded (like=x)"
                )
            like = self.b_dec
        _, out_mul, shift = self._stats(like.to(self.W_dec.dtype))
        return out_mul, shift

    def decode(self, f: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruction [..., d_in] of features f [..., d_sae], in the scale of activation `like`."""
        out = self._linear(f) + self.b_dec  # [..., d_in]
        out_mul, shift = self._like(like)
        if out_mul is not None:
            out = out * out_mul
        return out if shift is None else out + shift

    def delta(self, df: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
        """decode(f + df) − decode(f) [..., d_in]: the exact change of a feature edit df [..., d_sae]."""
        out = self._linear(df)  # [..., d_in]
        out_mul, _ = self._like(like)
        return out if out_mul is None else out * out_mul


def _build(cfg: dict[str, Any], tensors: dict[str, torch.Tensor], directory: Path) -> SAE:
    return SAE(**fields(cfg, tensors, directory))


def load(ref: str | Path, *, base_dir: Path | None = None, revision: str | None = None) -> SAE:
    """An SAE from a directory in SAELens's layout or `hf://user/name[/subdir][@revision]`."""
    directory = sae_files.resolve(ref, base_dir, revision)
    cfg, tensors = sae_files.read(directory)
    sae = _build(cfg, tensors, directory)
    return dataclasses.replace(sae, source=str(ref))


def save(sae: SAE, directory: str | Path) -> Path:
    """Write `sae` as cfg.json + sae_weights.safetensors (SAELens layout); return the directory."""
    return sae_files.write(Path(directory), cfg_of(sae), tensors_of(sae))


def random_sae(
    architecture: Architecture = "standard",
    d_in: int = 32,
    d_sae: int = 64,
    hook_name: str = "blocks.0.hook_resid_post",
    *,
    seed: int = 0,
    k: float | None = None,
    normalize_activations: str = "none",
    apply_b_dec_to_input: bool = True,
    scale: float = 0.3,
) -> SAE:
    """An SAE with seeded random weights (biases too, so every term of the formulas is exercised)."""
    import torch

    gen = torch.Generator().manual_seed(seed)

    def draw(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * scale

    dims = {"d_in": d_in, "d_sae": d_sae}
    tensors = {n: draw(*(dims[d] for d in SHAPES[n])) for n in REQUIRED[architecture]}
    if "threshold" in tensors:
        tensors["threshold"] = tensors["threshold"].abs()
    if architecture in ("topk", "batchtopk") and k is None:
        k = max(1, d_sae // 8)
    cfg: dict[str, Any] = {
        "architecture": architecture,
        "d_in": d_in,
        "d_sae": d_sae,
        "hook_name": hook_name,
        "normalize_activations": normalize_activations,
        "apply_b_dec_to_input": apply_b_dec_to_input,
    }
    if k is not None:
        cfg["k"] = k
    return _build(cfg, tensors, Path("<random>"))
