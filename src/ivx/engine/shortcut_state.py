"""The exact shortcuts of one run: which are on (config, then a probe on the model), and their state.

`shortcuts` holds the forwards; this module decides per run and per cell: the config's reasons to
keep a shortcut off, the probe that recomputes the first prompt's corrupted baseline through the
enabled shortcuts (`verify`), the baseline's KV caches and block outputs the cells continue from,
and per cell the reusable prefix, the block it enters at and whether it is a no-op.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ivx.engine import recurrent_prefix, shortcuts, stagger, trim
from ivx.engine.baselines import Baselines
from ivx.engine.cellpatches import PatchBuilder
from ivx.engine.recurrent_prefix import RecomputedPrefix
from ivx.engine.workload import Workload
from ivx.model import hooks, kvcache, memory
from ivx.plan import schedule
from ivx.plan.grid import Cell

if TYPE_CHECKING:
    import torch

NAMES = ("prefix_reuse", "layer_reuse", "skip_noop", "defer_head", "trim_final")
PROBED = ("prefix_reuse", "layer_reuse", "defer_head", "trim_final")
KV = list[tuple["torch.Tensor", ...]]  # per layer: keys, values[, indexer keys] (see `kvcache.layers`)


def config_reasons(work: Workload) -> dict[str, str | None]:
    """Why each shortcut is off by the config alone (None: on unless its probe fails)."""
    if work.scoring.shortcuts_off is not None:
        return {name: work.scoring.shortcuts_off for name in NAMES}
    exp = work.exp
    batch = exp.batch
    all_logits = "output.logits: all needs every position's logits" if exp.output.logits == "all" else None
    info = work.lm.info
    state_bytes = sum(
        4 * info.n_layers * work.samples * p.length * info.d_model for p in work.prompts.values()
    )
    budget = memory.budget_bytes(batch.memory_gb, work.lm) / 2
    return {
        "prefix_reuse": "off in config (batch.prefix_reuse)" if not batch.prefix_reuse else all_logits,
        "layer_reuse": (
            "off in config (batch.layer_reuse)"
            if not batch.layer_reuse
            else "needs prefix reuse"
            if not batch.prefix_reuse or all_logits
            else f"{info.model_type} has no single block_output per position to resume from"
            if "block_output" not in info.components
            else f"{info.model_type} has layers that do not run (no block_output there) to resume from"
            if any("block_output" not in names for names in info.layers)
            else f"baseline block outputs ({state_bytes / 2**20:.0f} MiB) exceed half of batch.memory_gb"
            if state_bytes >= budget
            else None
        ),
        "skip_noop": "off in config (batch.skip_noop)" if not batch.skip_noop else all_logits,
        "defer_head": "off in config (batch.defer_head)" if not batch.defer_head else all_logits,
        "trim_final": (
            "off in config (batch.trim_final)"
            if not batch.trim_final
            else all_logits
            if all_logits
            else "off in config (batch.defer_head: trimming needs the deferred head)"
            if not batch.defer_head
            else f"no per-position output projection or MLP found in the last block of {info.model_type}"
            if trim.regions(work.lm.model) is None
            else None
        ),
    }


class ShortcutState:
    """Which shortcuts are on, the baseline state they reuse, and the record of what ran."""

    def __init__(self, work: Workload, base: Baselines) -> None:
        self.work = work
        self.base = base
        self.why_off = config_reasons(work)
        self.tuple_blocks = 0  # skipped blocks return states (0) or a tuple of this many: (states, None, ...)
        self.caches: dict[int, KV] = {}  # per prompt, per layer: the corrupted baseline's KV cache
        self.states: dict[int, torch.Tensor] = {}  # per prompt: baseline block outputs [layers, S, seq, d]
        self.report: dict[str, Any] = {"groups": []}  # what ran, for the manifest and the terminal
        self.noop_cells = 0  # cells answered by the corrupted baseline without a forward pass
        self._divergences: dict[tuple[int, str], int] = {}
        self._replay_error: str | None = None  # why the last probe failed, if it raised
        # recurrent layers (or any cache that cannot be cut, found when one is kept): the state at a
        # prefix's end is recomputed (the baseline's cache has only the final state), and layer reuse
        # does not need prefix reuse
        self.recurrent = kvcache.no_prefix_state(work.lm.model) is not None
        self.recomputed = RecomputedPrefix(work, base)

    def on(self, name: str) -> bool:
        """Whether a shortcut is on: enabled in the config and proven by its probe on this model."""
        return self.why_off[name] is None

    def cost(self) -> schedule.Cost:
        """Cost model of forwards on this model and device (see `schedule`), recorded in the report."""
        cost = shortcuts.estimate(self.work.lm)
        self.report["cost"] = cost.to_dict()
        return cost

    # ---- per cell ---------------------------------------------------------------------------
    def prefix(self, cell: Cell) -> int:
        """Tokens before the first edited position: their states equal the baseline run's."""
        if not self.on("prefix_reuse") or cell.index < 0 or not cell.edits:
            return 0
        if cell.prompt not in self.caches and cell.prompt not in self.recomputed.prompts:
            return 0
        return min(min(e.positions) for e in cell.edits)

    def start(self, prefix: int) -> int:
        """Position of a continuation's first token to pass explicitly: only with recomputed
        (recurrent) prefix states, whose cache cannot tell its length (see `shortcuts`)."""
        return prefix if self.recurrent else 0

    def entry(self, cell: Cell) -> int:
        """The cell's entry block: blocks below its first edited layer give the baseline's outputs."""
        if not self.on("layer_reuse") or cell.index < 0 or not cell.edits or cell.prompt not in self.states:
            return 0
        return min(
            0 if e.component == "embedding" else e.layer + (e.component == "block_output") for e in cell.edits
        )

    def noop(self, cell: Cell) -> bool:
        """Whether every edit of a cell copies the value its site already has in the cell's run.

        Then (by induction over the forward pass) the cell's run is the corrupted baseline run
        itself, and its outputs are that run's logits: exact, and not recomputed.
        """
        if not self.on("skip_noop") or cell.index < 0 or not cell.edits:
            return False
        for e in cell.edits:
            if e.kind != "vanilla" or e.source_positions != e.positions or e.vector is not None:
                return False
            if e.sae_error == "drop":  # the activation becomes the SAE's reconstruction: not a copy
                return False
            if e.source == "corrupted":
                continue
            if e.source not in ("base", "source") or max(e.positions) >= self._divergence(
                cell.prompt, e.source
            ):
                return False
        return cell.prompt in self.base.corrupt_logits

    def _divergence(self, prompt: int, source: str) -> int:
        """First position where the cells' input run can differ from the `source` run.

        Cells run the corrupted base input; in a causal model every activation at an earlier
        position is computed from identical tokens in both runs, so it is identical.
        """
        key = (prompt, source)
        if key not in self._divergences:
            p = self.work.prompts[prompt]
            run_ids = self.base.run_ids(self.work, prompt)
            other = p.base_ids if source == "base" else p.source_ids
            if other is None or len(other) != len(run_ids):
                self._divergences[key] = 0
                return 0
            differ = [i for i, (a, b) in enumerate(zip(run_ids, other, strict=True)) if a != b]
            if self.base.noise:
                differ += list(self.work.plan.corrupt_positions[prompt])
            self._divergences[key] = min(differ, default=len(run_ids))
        return self._divergences[key]

    # ---- baseline state -----------------------------------------------------------------------
    def keep(self, cells: list[Cell], cache: Any, store: dict, state_sites: list) -> None:
        """Keep the corrupted baseline's KV cache and block outputs of each prompt of a batch."""
        import torch

        S = self.work.samples
        stacked = torch.stack([store[site] for site in state_sites]) if state_sites else None
        for i, cell in enumerate(cells):
            rows = slice(i * S, (i + 1) * S)
            if self.on("prefix_reuse"):
                self._keep_cache(cell.prompt, cache, rows)
            if stacked is not None:
                self.states[cell.prompt] = stacked[:, rows].clone()  # [layers, rows, seq, d]

    def baseline_forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """The corrupted baseline's forward: logits and (prefix reuse on) its cache.

        A model whose forward fails when asked for a cache (tiny RWKV configs; RecurrentGemma or
        GraniteMoeHybrid without an attention layer, whose cache cannot tell its length) runs
        without one, and prefix reuse is switched off with the reason.
        """
        if self.on("prefix_reuse"):
            try:
                return self.work.forward(ids, keep_cache=True)
            except Exception as exc:  # noqa: BLE001 - transformers' own cache path fails on this model
                self._no_cache(f"its forward with a cache failed with {type(exc).__name__}: {str(exc)[:100]}")
        return self.work.forward(ids)

    def _no_cache(self, why: str) -> None:
        """Prefix reuse off for want of a cache; layer reuse reads block outputs, not the cache."""
        self.why_off["prefix_reuse"] = why
        self.caches.clear()
        self.recomputed.prompts.clear()

    def _keep_cache(self, prompt: int, cache: Any, rows: slice) -> None:
        """Keep one prompt's baseline KV cache cut to its rows; a cache that cannot be cut to a
        prefix (recurrent layers, a sliding window, compressed or other states) marks its prefix
        states as recomputed instead (`recurrent_prefix`, checked by `verify`)."""
        if cache is None:
            self._no_cache(kvcache.no_cache(self.work.lm.model, self.work.lm.info.model_type))
            return
        if self.recurrent:
            self.recomputed.keep(prompt, cache, rows)
            return
        try:
            self.caches[prompt] = kvcache.rows(kvcache.layers(cache, self.work.prompts[prompt].length), rows)
        except Exception as exc:  # noqa: BLE001 - a cache ivx cannot cut
            if not hasattr(cache, "layers"):  # no cache ivx can select rows of
                self._no_cache(f"cache check failed with {type(exc).__name__}: {str(exc)[:100]}")
                return
            self.recurrent = True  # recompute instead, for every prompt
            self.recomputed.prompts.update(self.caches)
            self.caches.clear()
            self._keep_cache(prompt, cache, rows)

    def past(self, cells: list[Cell], prefix: int, entries: list[int], builder: PatchBuilder) -> Any:
        """The baseline KV cache of the first `prefix` tokens, as one batch; per layer only the rows
        that run it (`entries`: each row's entry block, ascending; see `stagger`)."""
        if self.recurrent:
            return self.recomputed.past(cells, prefix, entries, builder)
        S = self.work.samples
        kept = []
        layers = len(self.caches[cells[0].prompt])
        for layer, rows in enumerate(stagger.cache_rows(entries, layers, self.work.lm.info.n_layers)):
            kept.append(
                kvcache.cut([self.caches[c.prompt][layer] for c in cells[: -(-rows // S)]], prefix, rows)
            )
        return kvcache.build(self.work.lm.model.config, kept)

    def entering(self, cells: list[Cell], prefix: int, entries: list[int]) -> Any:
        """Context: each row enters the blocks at its entry block, the rest from the baseline's states."""
        import torch

        S = self.work.samples

        def states(block: int, start: int, out: torch.Tensor | None) -> torch.Tensor:
            first = start // S  # rows of one cell share an entry, so `start` is a multiple of S
            parts = [self.states[c.prompt][block][:, prefix:] for c in cells[first:]]
            if out is None:
                return torch.cat(parts)
            torch.cat(parts, out=out)
            return out

        return stagger.staggered(self.work.lm, entries, states, self.tuple_blocks)

    # ---- the probe ------------------------------------------------------------------------------
    def verify(self, builder: PatchBuilder) -> None:
        """Recompute the first prompt's corrupted baseline through every enabled shortcut at once.

        It must reproduce the baseline's plain-forward logits; if it does not, each shortcut is
        checked alone and the failing ones are switched off with the reason (see `shortcuts`).
        """
        import transformers

        if self.recurrent and self.on("prefix_reuse") and self.recomputed.prompts:
            self.why_off["prefix_reuse"] = self.recomputed.continues(builder)
        wanted = [n for n in PROBED if self.why_off[n] is None]
        if wanted and self.base.corrupt_logits:
            prompt = min(self.base.corrupt_logits)
            if not self._replays(builder, prompt, set(wanted)):
                self._probe_alone(builder, prompt, wanted, transformers.__version__)
        if not self.on("prefix_reuse"):
            self.caches.clear()
            self.recomputed.prompts.clear()
        self.recomputed.release()
        if not self.on("layer_reuse"):
            self.states.clear()
        self.report["transformers"] = transformers.__version__
        self.report["cache_argument"] = kvcache.argument(self.work.lm.model.forward)
        self.report["tuple_blocks"] = self.tuple_blocks
        self.report["shortcuts"] = {
            name: {"on": why is None, **({"why": why} if why else {})} for name, why in self.why_off.items()
        }

    def _probe_alone(self, builder: PatchBuilder, prompt: int, wanted: list[str], version: str) -> None:
        """Check each shortcut alone, switch off those that fail, then the survivors together."""
        for name in wanted:
            ok = self._block_arity(builder, prompt) if name == "layer_reuse" else None
            if not (ok or self._replays(builder, prompt, {name})):
                differ = "results differ from the plain forward"
                if name == "prefix_reuse" and self.recurrent:
                    differ = recurrent_prefix.not_continued(self.work.lm.info.model_type)
                self.why_off[name] = f"{self._replay_error or differ} (transformers {version}); switched off"
        if (
            "prefix_reuse" in wanted  # failed its probe: the cache API may have changed
            and self.why_off["prefix_reuse"] is not None
            and self.why_off["layer_reuse"] is None
            and not self.recurrent
        ):
            self.why_off["layer_reuse"] = "needs prefix reuse"
        if self.why_off["defer_head"] is not None and self.why_off["trim_final"] is None:
            self.why_off["trim_final"] = "needs the deferred head"
        alive = {n for n in PROBED if self.why_off[n] is None}
        if alive and not self._replays(builder, prompt, alive):  # each works alone, not together
            for name in alive:
                self.why_off[name] = "results differ when combined with the other shortcuts"

    def _block_arity(self, builder: PatchBuilder, prompt: int) -> bool:
        """Layer reuse alone, with skipped blocks returning states, (states,) (transformers 4.x) or
        (states, None) (blocks that also return attention weights, as Bamba's); the first that
        replays is kept."""
        first_error = None
        for arity in (0, 1, 2, 3):
            self.tuple_blocks = arity
            if self._replays(builder, prompt, {"layer_reuse"}):
                return True
            first_error = first_error or self._replay_error
        self.tuple_blocks = 0
        self._replay_error = first_error
        return False

    def _replays(self, builder: PatchBuilder, prompt: int, use: set[str]) -> bool:
        """Whether the corrupted baseline of `prompt`, recomputed with the shortcuts `use`, is unchanged."""
        import torch

        work = self.work
        prefix = work.prompts[prompt].length // 2 if "prefix_reuse" in use else 0
        # layer reuse: two copies of the run, one entering at a late block (every block below it
        # returns the stored states, as most cells' do), one after the last block (staggered; cheap).
        # Even a 2-layer model skips a block, so how skipped blocks must return is always checked.
        # Prefix reuse alone: two copies too, so a cache's rows are selected as in a batch of cells.
        top = work.lm.info.n_layers
        entries = [min(top - 1, max(1, top - 2)), top] if "layer_reuse" in use else [0, 0] if prefix else [0]
        cells = [Cell(-1 - prompt, prompt, (), ())] * len(entries)
        entries = [e for e in entries for _ in range(work.samples)]
        ids = torch.tensor([self.base.run_ids(work, prompt)] * len(cells))
        ids = ids.repeat_interleave(work.samples, dim=0)[:, prefix:]
        self._replay_error = None
        try:
            patches = builder.build(cells, offset=prefix).patches
            past = self.past(cells, prefix, entries, builder) if prefix else None
            entering = self.entering(cells, prefix, entries)
            trimming = trim.trimmed(work.lm, "trim_final" in use)
            with torch.inference_mode(), hooks.patching(work.lm.model, patches), entering, trimming:
                if use & {"defer_head", "trim_final"}:
                    logits = shortcuts.unembed(
                        work.lm, shortcuts.final_hidden(work.lm, ids, past, self.start(prefix))
                    )
                else:
                    logits, _ = work.forward(ids, past=past, start=self.start(prefix))
        except Exception as exc:  # a changed API: the shortcut stays off
            self._replay_error = f"check failed with {type(exc).__name__}: {str(exc)[:100]}"
            return False
        expected = self.base.corrupt_logits[prompt].repeat(len(cells), 1)
        return logits.shape == expected.shape and bool(
            torch.allclose(logits.cpu(), expected, rtol=1e-4, atol=1e-4)
        )
