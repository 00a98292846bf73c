"""The SAEs shipped inside the package, by name: `sae: ivx-toy-sae` is `assets/ivx-toy-sae/`.

`ivx-toy-sae` is a TopK SAE (k = 16, 1024 features) on the bundled ivx-toy model's
`blocks.2.hook_resid_post`, trained by `ivx sae train configs/sae_train.yaml` (docs/sae_training.md).
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).parents[1] / "assets"
BUNDLED: dict[str, Path] = {"ivx-toy-sae": ASSETS / "ivx-toy-sae"}


def bundled(ref: object) -> Path | None:
    """The directory of a bundled SAE name (None for anything else: a path or an hf:// reference)."""
    return BUNDLED.get(ref) if isinstance(ref, str) else None
