"""Prefix reuse for models with recurrent layers: the state at a prefix's end, recomputed.

A state-space, linear-attention or short-convolution layer keeps one state per sequence in
transformers' cache, the state after the last token, so the baseline's cache cannot be cut to a
prefix as a KV cache can. A cell that edits nothing before position p still needs the state at
p: the baseline's first p tokens run alone (with the baseline's corruption; patches past the
prefix fall outside the shorter run) and the cell continues from that cache. Once per prompts ×
prefix in a row of forwards (the schedule groups cells by prefix), never more tokens than the
cells skip. The same holds for any cache ivx cannot cut (`kvcache.layers` says why): a sliding
window shorter than the prompt, DeepSeek-V4's compressed entries, MiniMax's lightning-attention
state kept beside its cache layers.

Whether a model continues a multi-token input from a cached recurrent state exactly is a
property of its transformers implementation (Mamba 1's scan restarts from a zero state), so it
is checked on the model before any cell (`RecomputedPrefix.continues`), on the cache's states
themselves rather than on logits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ivx.engine import stagger
from ivx.engine.baselines import Baselines
from ivx.engine.cellpatches import PatchBuilder
from ivx.engine.workload import Workload
from ivx.model import hooks, kvcache
from ivx.plan.grid import Cell

if TYPE_CHECKING:
    import torch

RELATIVE = 1e-3  # a continued state may differ from the full run's by this much of its largest entry


def not_continued(model_type: str) -> str:
    """The reason prefix reuse is off for a model that does not continue from its recurrent state."""
    return (
        f"{model_type} does not continue a multi-token input from its cached recurrent state "
        "as its full forward computes it"
    )


class RecomputedPrefix:
    """Recomputed prefix caches of one run: which prompts have them, the last one computed."""

    def __init__(self, work: Workload, base: Baselines) -> None:
        self.work = work
        self.base = base
        self.prompts: set[int] = set()  # prompts whose prefix states are recomputed
        self._last: tuple[tuple, Any] | None = None  # (prompts, prefix) → its cache
        self._final: tuple[int, list[torch.Tensor]] | None = None  # a prompt's full-run cache tensors

    def keep(self, prompt: int, cache: Any, rows: slice) -> None:
        """Mark a prompt's baseline as run; keep the first prompt's final cache for the check."""
        self.prompts.add(prompt)
        if (
            cache is not None
            and hasattr(cache, "layers")
            and (self._final is None or prompt < self._final[0])
        ):
            self._final = (prompt, kvcache.state_tensors(cache, rows))

    def release(self) -> None:
        """Drop the kept caches (after the check; cells build their own)."""
        self._last = None
        self._final = None

    def past(self, cells: list[Cell], prefix: int, entries: list[int], builder: PatchBuilder) -> Any:
        """The baseline's cache after its first `prefix` tokens, for the rows of `cells` (each
        with `samples` rows); per layer only the rows that run it (`entries`, see `stagger`)."""
        import torch

        work, S = self.work, self.work.samples
        prompts = list(dict.fromkeys(c.prompt for c in cells))
        key = (tuple(prompts), prefix)
        if self._last is None or self._last[0] != key:
            self._last = None  # free the previous one first
            runs = [Cell(-1 - p, p, (), ()) for p in prompts]
            ids = torch.tensor([self.base.run_ids(work, p)[:prefix] for p in prompts])
            with torch.inference_mode(), hooks.patching(work.lm.model, builder.build(runs).patches):
                _, cache = work.forward(ids.repeat_interleave(S, dim=0), keep_cache=True)
            if cache is None or not hasattr(cache, "layers"):
                raise TypeError(f"{work.lm.info.model_type} returned no cache object to continue from")
            self._last = (key, cache)
        index = torch.cat([torch.arange(S) + prompts.index(c.prompt) * S for c in cells])
        layers = max(len(self._last[1].layers), work.lm.info.n_layers)  # MiniMax's grow lazily
        per_layer = stagger.cache_rows(entries, layers, work.lm.info.n_layers)
        return kvcache.select_rows(self._last[1], index, per_layer)

    def continues(self, builder: PatchBuilder) -> str | None:
        """Why recomputed prefix states cannot be continued from (None: they can).

        The first prompt's second half, run from its recomputed first half, must leave every state
        of the cache (keys, values, convolution and recurrent states) as the full run left it.
        Checked on the states rather than the logits: a model that restarts a multi-token input
        from a zero state can change a random tiny model's logits by less than any tolerance while
        it changes a trained model's completely.
        """
        import torch
        import transformers

        work = self.work
        version = f"(transformers {transformers.__version__})"
        if self._final is None:
            return f"{work.lm.info.model_type} returned no cache to continue from {version}"
        prompt, want = self._final
        prefix = work.prompts[prompt].length // 2
        if prefix == 0:
            return None
        cells = [Cell(-1 - prompt, prompt, (), ())]
        ids = torch.tensor([self.base.run_ids(work, prompt)]).repeat_interleave(work.samples, dim=0)
        try:
            past = self.past(cells, prefix, [0] * work.samples, builder)
            patches = builder.build(cells, offset=prefix).patches
            with torch.inference_mode(), hooks.patching(work.lm.model, patches):
                work.forward(ids[:, prefix:], past=past, start=prefix)
            got = kvcache.state_tensors(past, slice(None))
        except Exception as exc:  # noqa: BLE001 - the model cannot continue from a cache it returned
            return f"cache check failed with {type(exc).__name__}: {str(exc)[:100]} {version}"
        finally:
            self._last = None
        if [t.shape for t in got] != [t.shape for t in want]:
            return f"the continued cache holds other shapes than the full run's {version}"
        for a, b in zip(got, want, strict=True):
            if (
                b.numel()
                and float((a.float() - b.float()).abs().max())
                > RELATIVE * float(b.float().abs().max()) + 1e-6
            ):
                return f"{not_continued(work.lm.info.model_type)} {version}"
        return None
