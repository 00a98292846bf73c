"""An activation cache: every requested site of a model's forward passes over a few prompts.

The notebook counterpart of TransformerLens' `run_with_cache` and nnsight's `.save()`:
`capture(lm, prompts, ["block_output.3", "head_attention_value_output.2"])` runs each prompt once
(prompts of equal length batched, no padding, so values equal single-prompt runs) with read-only
hooks, which are removed also when the forward fails, and returns a `Cache` keyed by ivx site
names `component.layer` (`embedding` has no layer). A bare component (`block_output`) means every
layer; TransformerLens hook names (`blocks.3.attn.hook_z`, `blocks.0.hook_resid_pre`) are accepted
as aliases. Values are `[prompts, seq, dim]` (`[prompts, seq, heads, head_dim]` for head_* sites),
zero-padded on the right to the longest prompt (`Cache.lengths`), assembled when first read.
"""

from __future__ import annotations

import difflib
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ivx.config import tl_names
from ivx.model import components, hooks
from ivx.model.components import ComponentError, ModelInfo, Site

if TYPE_CHECKING:
    import torch

    from ivx.model.loading import LoadedModel


def valid_names(info: ModelInfo) -> list[str]:
    """Every site name of a model: `embedding`, then `component.layer` for each layer."""
    names = ["embedding"] if "embedding" in info.components else []
    return names + [
        f"{c}.{layer}" for c in info.components if c != "embedding" for layer in range(info.n_layers)
    ]


def _unknown(name: str, info: ModelInfo, why: str = "") -> ComponentError:
    """A ComponentError naming the nearest ivx site names."""
    near = difflib.get_close_matches(name, valid_names(info) + list(info.components), n=3, cutoff=0.5)
    hint = f"; nearest: {', '.join(near)}" if near else ""
    return ComponentError(
        f"unknown site {name!r}{why}{hint} (ivx site names are component.layer, e.g. block_output.0; "
        f"components: {', '.join(info.components)})"
    )


def _from_tl(name: str, info: ModelInfo) -> str:
    """The ivx name of a TransformerLens hook name `blocks.L.<hook>` (or `hook_embed`)."""
    layer, hook = tl_names.split(name)
    if hook in tl_names.REFUSED:
        raise ComponentError(f"TransformerLens hook {name!r} has no ivx site: {tl_names.REFUSED[hook]}")
    if hook not in tl_names.ALIASES:
        raise _unknown(name, info, " (not a TransformerLens hook ivx knows)")
    component = tl_names.ALIASES[hook]
    if component == "embedding":
        return component
    return component if layer is None else f"{component}.{layer}"


def parse(names: str | Sequence[str], info: ModelInfo) -> list[tuple[str, str, int]]:
    """(ivx name, component, layer) of every requested site; ComponentError naming the nearest ones."""
    out: list[tuple[str, str, int]] = []
    for raw in [names] if isinstance(names, str) else list(names):
        name = _from_tl(raw, info) if tl_names.is_tl(raw) else raw
        component, _, layer_text = name.partition(".")
        if component not in components.COMPONENTS:
            raise _unknown(raw, info)
        if component == "embedding":
            out.append(("embedding", "embedding", 0))
        elif not layer_text:  # every layer
            out += [(f"{component}.{layer}", component, layer) for layer in range(info.n_layers)]
        elif layer_text.lstrip("-").isdigit():
            layer = int(layer_text) + (info.n_layers if layer_text.startswith("-") else 0)
            out.append((f"{component}.{layer}", component, layer))
        else:
            raise _unknown(raw, info, f": the layer {layer_text!r} is not an integer")
    return list(dict.fromkeys(out))


class Cache(Mapping[str, Any]):
    """Captured activations keyed by ivx site name; TransformerLens names are accepted on lookup."""

    def __init__(
        self,
        info: ModelInfo,
        sites: dict[str, Site],
        per_prompt: list[dict[str, Any]],
        tokens: list[list[str]],
        logits: list[Any],
    ) -> None:
        self.info = info
        self.sites = sites
        self.tokens = tokens  # per prompt, its tokens as text
        self._per_prompt = per_prompt  # per prompt: name → [seq, dim]
        self._logits = logits  # per prompt: [seq, vocab]
        self._built: dict[str, Any] = {}

    @property
    def lengths(self) -> list[int]:
        """Each prompt's token count (positions past it are padding)."""
        return [len(t) for t in self.tokens]

    def _key(self, key: str) -> str:
        if key in self.sites:
            return key
        try:
            parsed = parse(key, self.info)
        except ComponentError as exc:
            raise KeyError(str(exc)) from None
        if len(parsed) == 1 and parsed[0][0] in self.sites:
            return parsed[0][0]
        near = difflib.get_close_matches(key, list(self.sites), n=3, cutoff=0.4)
        raise KeyError(
            f"{key!r} was not captured; captured: {', '.join(self.sites)}"
            + (f" (nearest: {', '.join(near)})" if near else "")
        )

    def __getitem__(self, key: str) -> torch.Tensor:
        name = self._key(key)
        if name not in self._built:
            self._built[name] = self._stack([p[name] for p in self._per_prompt], self.sites[name])
        return self._built[name]

    def _stack(self, values: list[torch.Tensor], site: Site | None) -> torch.Tensor:
        """`[prompts, seq, ...]`, zero-padded on the right; head sites split into heads."""
        import torch

        longest = max(v.shape[0] for v in values)
        out = torch.zeros(len(values), longest, *values[0].shape[1:], dtype=values[0].dtype)
        for i, v in enumerate(values):
            out[i, : v.shape[0]] = v
        if site is not None and site.component.startswith("head_"):
            return out.view(len(values), longest, site.n_heads, site.head_dim)
        return out

    @property
    def logits(self) -> torch.Tensor:
        """The model's logits `[prompts, seq, vocab]` (zero-padded like the sites)."""
        return self._stack(self._logits, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self.sites)

    def __len__(self) -> int:
        return len(self.sites)

    def __repr__(self) -> str:
        return f"Cache({len(self.tokens)} prompts, sites: {', '.join(self.sites)})"


def capture(lm: LoadedModel, prompts: str | Sequence[str], names: str | Sequence[str]) -> Cache:
    """Run `prompts` through the model once, capturing `names`; the model's outputs are unchanged."""
    import torch

    texts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not texts or not all(isinstance(t, str) and t for t in texts):
        raise ComponentError("prompts must be a non-empty string or a list of non-empty strings")
    parsed = parse(names, lm.info)
    sites = {name: components.resolve(lm.model, lm.info, c, layer) for name, c, layer in parsed}
    ids = [lm.tokenizer(t)["input_ids"] for t in texts]
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, row in enumerate(ids):
        by_length[len(row)].append(i)
    per_prompt: list[dict[str, Any]] = [{} for _ in texts]
    logits: list[Any] = [None] * len(texts)
    with torch.inference_mode():
        for group in by_length.values():
            batch = torch.tensor([ids[i] for i in group], device=lm.device)  # [group, seq]
            with hooks.capturing(lm.model, list(sites.values())) as store:
                out = lm.model(input_ids=batch).logits  # [group, seq, vocab]
            for j, i in enumerate(group):
                per_prompt[i] = {name: store[site][j].cpu() for name, site in sites.items()}
                logits[i] = out[j].float().cpu()
    tokens = [[lm.tokenizer.decode([t]) for t in row] for row in ids]
    return Cache(lm.info, sites, per_prompt, tokens, logits)
