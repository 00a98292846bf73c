"""Bind planned edits to tensors for generation: source-run activations, steering vectors, noise.

`plan.expand` (generate mode) says where each edit goes; this module fetches what it writes
there — the source run's activation at the site (one capture forward per run and prompt), a
vector from a file or from contrast prompts (ActAdd: the mean activation difference of
positive/negative pairs), or the noise scale — and pairs it with the site and edit function.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ivx.core.errors import ConfigError
from ivx.engine import patches
from ivx.engine import sae as sae_edits
from ivx.engine.decoding import Bound
from ivx.model import components, hooks
from ivx.plan import tokenization
from ivx.store.vectors import load_vector

if TYPE_CHECKING:
    import torch

    from ivx.config.loader import LoadedConfig
    from ivx.config.schema import Contrast
    from ivx.model.components import Site
    from ivx.model.loading import LoadedModel
    from ivx.plan.edits import Edit
    from ivx.plan.grid import Cell
    from ivx.plan.tokenization import TokenizedPrompt


def _capture(lm: LoadedModel, sites: Sequence[Site], ids: Sequence[int]) -> dict[Site, torch.Tensor]:
    """Each site's component for every token of `ids`: {site: [seq, dim]}."""
    import torch

    batch = torch.tensor([list(ids)], device=lm.device)
    with torch.inference_mode(), hooks.capturing(lm.model, list(sites)) as store:
        lm.model(input_ids=batch)
    return {site: acts[0] for site, acts in store.items()}


def contrast_vector(
    lm: LoadedModel, site: Site, contrast: Contrast, base_dir: Path, bos: bool = False
) -> torch.Tensor:
    """ActAdd: activation(positive) − activation(negative), or the mean over a JSONL of pairs."""
    import torch

    if contrast.file is not None:
        path = base_dir / contrast.file
        pairs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    else:
        pairs = [{"positive": contrast.positive, "negative": contrast.negative}]

    def pick(text: str) -> torch.Tensor:
        acts = _capture(lm, [site], tokenization.ids(lm.tokenizer, text, bos))[site]
        return acts[-1] if contrast.position == "last" else acts.mean(0)

    vector = torch.stack([pick(p["positive"]) - pick(p["negative"]) for p in pairs]).mean(0)
    if contrast.normalize:
        vector = vector / vector.norm().clamp_min(1e-12)
    return vector


@dataclass
class Binder:
    """Turns planned edits into `Bound` items: sites, functions, sources, vectors, noise."""

    lm: LoadedModel
    cfg: LoadedConfig
    bos: bool
    multi_site: set[int]  # interventions with more than one site: vectors saved per site
    saved: dict[str, Any] = field(default_factory=dict)
    vectors: dict[tuple[Any, ...], Any] = field(default_factory=dict)
    fns: dict[tuple[object, ...], Any] = field(default_factory=dict)

    def site(self, component: str, layer: int) -> Site:

        return components.resolve(self.lm.model, self.lm.info, component, layer)

    def vector(self, edit: Edit, site: Site) -> torch.Tensor | None:
        """The steering vector of an edit (computed or loaded once per site), or None."""

        # the edit's own contrast / vector: a `$axis` in them gives each grid point its own
        key = (edit.index, edit.component, edit.layer, edit.contrast, edit.vector)
        if (edit.contrast is None and edit.vector is None) or key in self.vectors:
            return self.vectors.get(key)
        base_dir = self.cfg.path.parent
        if edit.contrast is not None:
            vec = contrast_vector(self.lm, site, edit.contrast, base_dir, self.bos).to(self.lm.device)
            label = f"{edit.component}.{edit.layer}." if edit.index in self.multi_site else ""
            self.saved[f"{edit.name}.{label}vector"] = vec.detach().cpu().contiguous()
        else:
            vec = load_vector(str(edit.vector), edit.name, base_dir).to(self.lm.device)
        if vec.dim() != 1 or vec.shape[0] != site.dim:
            raise ConfigError(
                [
                    self.cfg.problem(
                        ("interventions", edit.index, "vector" if edit.vector else "contrast"),
                        f"the vector has shape {tuple(vec.shape)}, but {edit.component} has {site.dim} dims",
                    )
                ]
            )
        self.vectors[key] = vec
        return vec

    def fn(self, edit: Edit) -> Any:

        key = patches.group_key(edit)
        if key not in self.fns:
            trained = patches.trained_loader(self.lm, self.cfg.path.parent)
            sae = sae_edits.loader(self.lm, self.cfg.path.parent)
            self.fns[key] = patches.fixed_or_trained(trained, sae)(edit)
        return self.fns[key]

    def bind(self, local: int, prompt: TokenizedPrompt, edits: Sequence[Edit]) -> list[Bound]:
        """Bound items of one prompt (generated as text number `local`)."""
        sites = {e: self.site(e.component, e.layer) for e in edits}
        acts = self._sources(prompt, [e for e in edits if e.source in ("base", "source")], sites)
        out = []
        for edit in edits:
            site = sites[edit]
            vec = self.vector(edit, site)
            source = None
            if edit.source in ("base", "source"):
                source = acts[(edit.source, site)][list(edit.source_positions)]
            elif vec is not None and edit.positions:
                source = vec.expand(len(edit.positions), -1)
            std = self._noise_std(edit)
            seed = self.cfg.experiment.seed + 1 + edit.index
            out.append(Bound(local, prompt.index, edit, site, self.fn(edit), source, vec, std, seed))
        return out

    def _sources(
        self, prompt: TokenizedPrompt, edits: list[Edit], sites: dict[Edit, Site]
    ) -> dict[tuple[str, Site], torch.Tensor]:
        """Source-run activations at every site these edits copy from: one forward per run."""
        out = {}
        for run in ("base", "source"):
            wanted = list(dict.fromkeys(sites[e] for e in edits if e.source == run))
            ids = prompt.source_ids if run == "source" else prompt.base_ids
            if wanted and ids is not None:
                out.update({(run, site): acts for site, acts in _capture(self.lm, wanted, ids).items()})
        return out

    def _noise_std(self, edit: Edit) -> float | None:
        if edit.kind != "noise":
            return None
        weight = self.lm.model.get_input_embeddings().weight.detach()
        return (edit.value if edit.value is not None else 3.0) * float(weight.float().std())


def multi_site(cells: Sequence[Cell]) -> set[int]:
    sites: dict[int, set[tuple[str, int]]] = {}
    for cell in cells:
        for e in cell.edits:
            sites.setdefault(e.index, set()).add((e.component, e.layer))
    return {index for index, found in sites.items() if len(found) > 1}
