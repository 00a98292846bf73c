"""ivx: causal interventions on Hugging Face causal language models, from one YAML file.

Library use: `ivx.run(config_or_path_or_dict, **overrides) -> Run`, `ivx.load_run(path) -> Run`,
`ivx.Model(name)` (load once, run many) and `ivx.cache(model, prompts, sites)` (see ivx.api); all
are imported on first use so `import ivx` stays instant.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Model", "Run", "cache", "load_run", "run", "__version__"]


def __getattr__(name: str) -> Any:
    """Lazy exports of the Python API (no torch or pandas at import time)."""
    if name in ("run", "load_run", "Run", "Model", "cache"):
        from ivx import api

        return getattr(api, name)
    raise AttributeError(f"module 'ivx' has no attribute {name!r}")
