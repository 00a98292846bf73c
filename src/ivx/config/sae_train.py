"""`sae_train:` the settings of `ivx sae train` (a sparse autoencoder trained on one site).

Pure data, no torch. The site is a component and a layer, or a TransformerLens hook name
(`blocks.1.hook_resid_post`, which sets the layer); the prompts, the model and the seed are the
experiment's own `model:`, `prompts:` and `seed:`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ivx.config import tl_names
from ivx.config.fields import Component
from ivx.config.settings import Strict

MAX_LATENTS = 1 << 20  # far beyond any SAE a CPU trains; guards against typos (d_sae: 1e9)


class SaeTrain(Strict):
    """`sae_train:` what `ivx sae train` trains: a TopK or ReLU + L1 sparse autoencoder at one site."""

    component: Component = Field(
        "block_output",
        description="The site's component (ivx name, or a TransformerLens hook name such as "
        "blocks.1.hook_resid_post, which also sets `layer`).",
    )
    layer: int = Field(0, description="The site's layer (negative counts from the last layer).")
    architecture: Literal["topk", "standard"] = Field(
        "topk",
        description="topk: the k largest latents stay (Gao et al. 2024), dead latents trained by the "
        "auxiliary loss; standard: ReLU latents with an L1 penalty, dead latents resampled.",
    )
    k: int | None = Field(None, ge=1, description="topk: latents active per token (default 16).")
    d_sae: int | None = Field(None, ge=1, le=MAX_LATENTS, description="Number of latents.")
    expansion: int | None = Field(
        None, ge=1, le=256, description="Number of latents as a multiple of the site's width (default 4)."
    )
    steps: int | None = Field(None, ge=1, description="Optimisation steps (default: 1 epoch).")
    epochs: float | None = Field(
        None, gt=0, le=10_000, description="Passes over the activations (instead of `steps`)."
    )
    batch_size: int = Field(256, ge=1, le=1 << 20, description="Activations (tokens) per step.")
    lr: float = Field(4e-4, gt=0, lt=1, description="Adam learning rate.")
    warmup_steps: int = Field(0, ge=0, description="Linear learning-rate warm-up.")
    decay_fraction: float = Field(
        0.2, ge=0, le=1, description="The learning rate falls linearly to 0 over this last fraction of steps."
    )
    l1_coefficient: float | None = Field(
        None, gt=0, description="standard: weight of the L1 penalty on the latents (default 5)."
    )
    aux_k: int | None = Field(
        None, ge=1, description="topk: dead latents the auxiliary loss uses (default d_in / 2)."
    )
    aux_coefficient: float = Field(
        1 / 32, ge=0, description="topk: weight of the auxiliary loss on dead latents (0 switches it off)."
    )
    dead_after: int = Field(
        1000,
        ge=1,
        description="A latent that has not fired for this many steps counts as dead (auxiliary loss, "
        "resampling, the model card).",
    )
    resample_every: int | None = Field(
        None,
        ge=1,
        description="standard: resample dead latents towards badly reconstructed inputs every N steps "
        "(default: dead_after; never in the last fifth of training).",
    )
    normalize: bool = Field(
        True,
        description="Scale the activations to mean norm sqrt(d_in) while training (the scale is folded "
        "into the saved weights, which read the raw activations).",
    )
    eval_fraction: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="Activations held out (seeded) for the final MSE, FVE, L0 and dead fraction.",
    )
    checkpoint_every: int = Field(
        200, ge=1, description="Write a checkpoint every N steps (--resume continues from the last)."
    )
    dtype: Literal["float32", "float16"] = Field(
        "float32", description="dtype of the saved weights (training is float32)."
    )

    @model_validator(mode="before")
    @classmethod
    def _tl_layer(cls, data: Any) -> Any:
        return tl_names.with_layer(data)  # component: blocks.1.hook_resid_post sets layer 1

    @field_validator("component")
    @classmethod
    def _no_heads(cls, value: Any) -> Any:
        if isinstance(value, str) and (value.startswith("head_") or value.startswith("$")):
            raise ValueError(
                f"component {value!r}: an SAE reads one vector per token; head_* sites and $axis "
                "references are not supported"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SaeTrain:
        if self.d_sae is not None and self.expansion is not None:
            raise ValueError("give `d_sae` or `expansion`, not both")
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give `steps` or `epochs`, not both")
        if self.architecture == "topk" and self.l1_coefficient is not None:
            raise ValueError("l1_coefficient applies to architecture: standard (topk keeps k latents)")
        if self.architecture == "standard":
            unused = [name for name in ("k", "aux_k") if getattr(self, name) is not None]
            if unused:
                raise ValueError(f"{', '.join(unused)} apply to architecture: topk, not standard")
        if self.architecture == "topk" and self.resample_every is not None:
            raise ValueError("resample_every applies to architecture: standard (topk has the auxiliary loss)")
        return self

    def latents(self, d_in: int) -> int:
        """The number of latents for a site of width `d_in`."""
        return self.d_sae if self.d_sae is not None else d_in * (self.expansion or 4)
