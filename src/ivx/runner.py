"""Execute a plan: baseline runs once per prompt, then cells packed into batched forwards.

Every batch row carries its own sites: cells are grouped by prompt length (no padding, so
numbers equal single-sequence runs), and all edits of one (site, intervention) across the
batch become a single vectorised `Patch`. Clean and source activations are captured once per
prompt; corruption noise is drawn per (prompt, sample) from a seeded generator, independent
of batching.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ivx import hooks, interventions, kvcache, memory, metrics, schedule, shortcuts
from ivx.config import ConfigError, LoadedConfig
from ivx.memory import MAX_ROWS
from ivx.plan import Cell, Plan
from ivx.positions import TokenizedPrompt
from ivx.schema import TRAINABLE_KINDS

if TYPE_CHECKING:
    import torch

    from ivx.components import Site
    from ivx.models import LoadedModel


@dataclass
class Baselines:
    """Per-prompt reference runs: clean (uncorrupted base), source, corrupted (per sample)."""

    clean_logits: dict[int, torch.Tensor] = field(default_factory=dict)  # [vocab]
    source_logits: dict[int, torch.Tensor] = field(default_factory=dict)  # [vocab]
    corrupt_logits: dict[int, torch.Tensor] = field(default_factory=dict)  # [samples, vocab]
    clean_acts: dict[tuple[str, int], dict[int, torch.Tensor]] = field(default_factory=dict)
    corrupt_acts: dict[tuple[str, int], dict[int, torch.Tensor]] = field(default_factory=dict)
    source_acts: dict[tuple[str, int], dict[int, torch.Tensor]] = field(default_factory=dict)
    corrupt_ids: dict[int, tuple[int, ...]] = field(default_factory=dict)  # replace-corruption inputs
    noise: dict[int, torch.Tensor] = field(default_factory=dict)  # [samples, n_pos, d]
    sigma: float | None = None

    def reference_logits(self, prompt: int) -> torch.Tensor:
        """The 'clean' run metrics compare to: the source run if there is one, else clean base."""
        return self.source_logits.get(prompt, self.clean_logits[prompt])


@dataclass
class CellOutput:
    """What one executed cell produced."""

    cell: Cell
    row: dict[str, Any]
    logits: torch.Tensor | None  # [vocab] (or [seq, vocab]) mean over samples
    collected: dict[str, torch.Tensor]


class Executor:
    """Runs baselines and cells of one plan on one loaded model."""

    def __init__(
        self, cfg: LoadedConfig, lm: LoadedModel, prompts: list[TokenizedPrompt], plan: Plan
    ) -> None:
        self.cfg = cfg
        self.exp = cfg.experiment
        self.lm = lm
        self.prompts = {p.index: p for p in prompts}
        self.plan = plan
        self.sites: dict[tuple[str, int], Site] = {}
        self.vectors: dict[str, torch.Tensor] = {}
        self.trained: dict[str, Callable] = {}
        self._reference: dict[int, tuple[dict[str, float], dict[str, float]]] = {}
        corrupt = self.exp.corrupt
        self.samples = corrupt.samples if corrupt is not None and corrupt.kind == "noise" else 1
        self.base = Baselines()
        self.why_off = self._config_reasons()
        self.report: dict[str, Any] = {"groups": []}  # what ran, for the manifest and the terminal
        self.states: dict[int, torch.Tensor] = {}  # per prompt: baseline block outputs [layers, S, seq, d]
        self.noop_cells = 0  # cells answered by the corrupted baseline without a forward pass
        self.tuple_blocks = False  # skipped blocks return (states,) instead of states
        self._divergences: dict[tuple[int, str], int] = {}
        self.caches: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}  # per prompt, per layer

    def _config_reasons(self) -> dict[str, str | None]:
        """Why each shortcut is off by the config alone (None: on unless its probe fails)."""
        batch, logits = self.exp.batch, self.exp.output.logits
        all_logits = "output.logits: all needs every position's logits" if logits == "all" else None
        info = self.lm.info
        state_bytes = sum(
            4 * info.n_layers * self.samples * p.length * info.d_model for p in self.prompts.values()
        )
        budget = memory.budget_bytes(batch.memory_gb, self.lm) / 2
        return {
            "prefix_reuse": "off in config (batch.prefix_reuse)" if not batch.prefix_reuse else all_logits,
            "layer_reuse": (
                "off in config (batch.layer_reuse)"
                if not batch.layer_reuse
                else "needs prefix reuse"
                if not batch.prefix_reuse or all_logits
                else f"baseline block outputs ({state_bytes / 2**20:.0f} MiB) exceed half of batch.memory_gb"
                if state_bytes >= budget
                else None
            ),
            "skip_noop": "off in config (batch.skip_noop)" if not batch.skip_noop else all_logits,
            "defer_head": "off in config (batch.defer_head)" if not batch.defer_head else all_logits,
        }

    def _verify_shortcuts(self) -> None:
        """Recompute the first prompt's corrupted baseline through every enabled shortcut at once.

        It must reproduce the baseline's plain-forward logits; if it does not, each shortcut is
        checked alone and the failing ones are switched off with the reason (see `shortcuts`).
        """
        import transformers

        names = ("prefix_reuse", "layer_reuse", "defer_head")
        wanted = [n for n in names if self.why_off[n] is None]
        if wanted and self.base.corrupt_logits:
            prompt = min(self.base.corrupt_logits)
            if not self._replays(prompt, set(wanted)):
                for name in wanted:
                    if name == "layer_reuse" and not self._replays(prompt, {name}):
                        self.tuple_blocks = True  # blocks of transformers 4.x return tuples
                    if not self._replays(prompt, {name}):
                        self.tuple_blocks = self.tuple_blocks and name != "layer_reuse"
                        self.why_off[name] = (
                            f"{self._replay_error or 'results differ from the plain forward'} "
                            f"(transformers {transformers.__version__}); switched off"
                        )
                if self.why_off["prefix_reuse"] is not None and self.why_off["layer_reuse"] is None:
                    self.why_off["layer_reuse"] = "needs prefix reuse"
                alive = {n for n in names if self.why_off[n] is None}
                if alive and not self._replays(prompt, alive):  # each works alone, not together
                    for name in alive:
                        self.why_off[name] = "results differ when combined with the other shortcuts"
        if not self.reuse:
            self.caches.clear()
        if not self.layer_reuse:
            self.states.clear()
        self.report["transformers"] = transformers.__version__
        self.report["cache_argument"] = kvcache.argument(self.lm.model.forward)
        self.report["tuple_blocks"] = self.tuple_blocks
        self.report["shortcuts"] = {
            name: {"on": why is None, **({"why": why} if why else {})} for name, why in self.why_off.items()
        }

    def _replays(self, prompt: int, use: set[str]) -> bool:
        """Whether the corrupted baseline of `prompt`, recomputed with the shortcuts `use`, is unchanged."""
        import torch

        length = self.prompts[prompt].length
        prefix = length // 2 if "prefix_reuse" in use else 0
        skip = 1 if "layer_reuse" in use else 0
        cell = Cell(-1 - prompt, prompt, (), ())
        ids = torch.tensor([self.base.corrupt_ids.get(prompt, self.prompts[prompt].base_ids)])
        ids = ids.repeat_interleave(self.samples, dim=0)[:, prefix:]
        self._replay_error: str | None = None
        try:
            patches, _ = self._patches([cell], offset=prefix)
            past = self._past([cell], prefix) if prefix else None
            states = self.states[prompt][skip - 1][:, prefix:] if skip else None
            with torch.inference_mode(), hooks.patching(self.lm.model, patches), self._skipping(skip, states):
                if "defer_head" in use:
                    logits = self._unembed(self._final_hidden(ids, past))
                else:
                    logits, _ = self.forward(ids, past=past)
        except Exception as exc:  # a changed API: the shortcut stays off
            self._replay_error = f"check failed with {type(exc).__name__}: {str(exc)[:100]}"
            return False
        expected = self.base.corrupt_logits[prompt]
        return logits.shape == expected.shape and bool(
            torch.allclose(logits.cpu(), expected, rtol=1e-4, atol=1e-4)
        )

    @property
    def reuse(self) -> bool:
        """Prefix reuse: cells continue from the baseline's KV cache."""
        return self.why_off["prefix_reuse"] is None

    @property
    def layer_reuse(self) -> bool:
        """Layer reuse: blocks below a cell's first edit return the baseline's outputs."""
        return self.why_off["layer_reuse"] is None

    @property
    def skip_noop(self) -> bool:
        """No-op cells are answered by the corrupted baseline."""
        return self.why_off["skip_noop"] is None

    # ---- helpers -------------------------------------------------------------------------
    def site(self, component: str, layer: int) -> Site:
        """Resolve (and cache) the Site of a component at a layer."""
        from ivx import components

        key = (component, layer)
        if key not in self.sites:
            self.sites[key] = components.resolve(self.lm.model, self.lm.info, component, layer)
        return self.sites[key]

    def forward(
        self, ids: torch.Tensor, all_logits: bool = False, past: Any = None, keep_cache: bool = False
    ) -> tuple[torch.Tensor, Any]:
        """Logits of a batch of equal-length rows (see `shortcuts.forward`)."""
        return shortcuts.forward(self.lm, ids, all_logits, past, keep_cache)

    def _final_hidden(self, ids: torch.Tensor, past: Any = None) -> torch.Tensor:
        return shortcuts.final_hidden(self.lm, ids, past)

    def _unembed(self, hidden: torch.Tensor) -> torch.Tensor:
        return shortcuts.unembed(self.lm, hidden)

    def defers_head(self) -> bool:
        """Whether cells run the backbone only and the LM head runs once for many cells."""
        return self.shortcut_state("defer_head")

    def shortcut_state(self, name: str) -> bool:
        """Whether a shortcut is on: enabled in the config and proven by its probe on this model."""
        return self.why_off[name] is None

    def cost(self) -> schedule.Cost:
        """Cost model of forwards on this model and device (see `schedule`)."""
        cost = shortcuts.estimate(self.lm)
        self.report["cost"] = cost.to_dict()
        return cost

    # ---- prefix reuse ---------------------------------------------------------------------
    def _prefix(self, cell: Cell) -> int:
        """Tokens before the first edited position: their states equal the baseline run's."""
        if not self.reuse or cell.index < 0 or not cell.edits or cell.prompt not in self.caches:
            return 0
        return min(min(e.positions) for e in cell.edits)

    def _skip(self, cell: Cell) -> int:
        """Blocks below the first edited layer: their outputs equal the baseline run's."""
        if not self.layer_reuse or cell.index < 0 or not cell.edits or cell.prompt not in self.states:
            return 0
        first = [
            0 if e.component == "embedding" else e.layer + (e.component == "block_output") for e in cell.edits
        ]
        return min(first)

    # ---- no-op cells ---------------------------------------------------------------------
    def _divergence(self, prompt: int, source: str) -> int:
        """First position where the cells' input run can differ from the `source` run.

        Cells run the corrupted base input; in a causal model every activation at an earlier
        position is computed from identical tokens in both runs, so it is identical. (Called
        after `prepare`, which fixes the corrupted inputs.)
        """
        key = (prompt, source)
        if key not in self._divergences:
            self._divergences[key] = self._first_difference(prompt, source)
        return self._divergences[key]

    def _first_difference(self, prompt: int, source: str) -> int:
        p = self.prompts[prompt]
        run_ids = self.base.corrupt_ids.get(prompt, p.base_ids)
        other = p.base_ids if source == "base" else p.source_ids
        if other is None or len(other) != len(run_ids):
            return 0
        differ = [i for i, (a, b) in enumerate(zip(run_ids, other, strict=True)) if a != b]
        if self.base.noise:
            differ += list(self.plan.corrupt_positions[prompt])
        return min(differ, default=len(run_ids))

    def _noop(self, cell: Cell) -> bool:
        """Whether every edit of a cell copies the value its site already has in the cell's run.

        Then (by induction over the forward pass) the cell's run is the corrupted baseline run
        itself, and its outputs are that run's logits: exact, and not recomputed.
        """
        if not self.skip_noop or cell.index < 0 or not cell.edits:
            return False
        for e in cell.edits:
            if e.kind != "vanilla" or e.source_positions != e.positions or e.vector is not None:
                return False
            if e.source == "corrupted":
                continue
            if e.source not in ("base", "source") or max(e.positions) >= self._divergence(
                cell.prompt, e.source
            ):
                return False
        return cell.prompt in self.base.corrupt_logits

    def _skipping(self, count: int, states: torch.Tensor | None) -> Any:
        return shortcuts.skipping(self.lm, count, states, self.tuple_blocks)

    def _keep_states(self, chunk: list[Cell], store: dict, sites: list) -> None:
        import torch

        S = self.samples
        stacked = torch.stack([store[site] for site in sites])  # [layers, rows, seq, d]
        for i, cell in enumerate(chunk):
            self.states[cell.prompt] = stacked[:, i * S : (i + 1) * S].clone()

    def _keep_cache(self, cache: Any, rows: slice) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(k[rows].clone(), v[rows].clone()) for k, v in kvcache.layers(cache)]

    def _past(self, chunk: list[Cell], prefix: int) -> Any:
        import torch

        pairs = [
            (
                torch.cat([self.caches[c.prompt][layer][0][:, :, :prefix] for c in chunk]),
                torch.cat([self.caches[c.prompt][layer][1][:, :, :prefix] for c in chunk]),
            )
            for layer in range(len(self.caches[chunk[0].prompt]))
        ]
        return kvcache.build(self.lm.model.config, pairs)

    def batch_rows(self, length: int) -> int:
        """Rows per forward pass from the memory budget (or the configured size)."""
        return memory.batch_rows(self.exp.batch, self.exp.output.logits, self.lm, length)

    def _vector(self, ref: str, name: str) -> torch.Tensor:
        if ref not in self.vectors:
            from ivx.vectors import load_vector

            self.vectors[ref] = load_vector(ref, name, self.cfg.path.parent)
        return self.vectors[ref]

    # ---- baselines -------------------------------------------------------------------------
    def _groups(self, lengths: dict[int, int]) -> Iterator[list[int]]:
        by_len: dict[int, list[int]] = defaultdict(list)
        for prompt, length in lengths.items():
            by_len[length].append(prompt)
        for length, items in sorted(by_len.items()):
            step = self.batch_rows(length)
            for i in range(0, len(items), step):
                yield items[i : i + step]

    def _capture_pass(
        self, ids_of: dict[int, tuple[int, ...]], needed: set[tuple[str, int]]
    ) -> tuple[dict[int, torch.Tensor], dict[tuple[str, int], dict[int, torch.Tensor]]]:
        import torch

        logits_out: dict[int, torch.Tensor] = {}
        acts: dict[tuple[str, int], dict[int, torch.Tensor]] = {key: {} for key in needed}
        sites = {key: self.site(*key) for key in needed}
        for group in self._groups({p: len(ids) for p, ids in ids_of.items()}):
            ids = torch.tensor([ids_of[p] for p in group])
            with hooks.capturing(self.lm.model, list(sites.values())) as store:
                logits, _ = self.forward(ids)
            for row, prompt in enumerate(group):
                logits_out[prompt] = logits[row].cpu()
                for key, site in sites.items():
                    acts[key][prompt] = store[site][row]
        return logits_out, acts

    def prepare(self) -> Baselines:
        """Capture clean and source activations once per prompt and run the corrupted baseline.

        Without a corruption the corrupted baseline is the clean run itself: with prefix reuse it
        runs once, keeping its KV cache and capturing the clean activations in the same pass.
        """
        base, corrupt = self.base, self.exp.corrupt

        def needed(source: str) -> set[tuple[str, int]]:
            return {(e.component, e.layer) for c in self.plan.cells for e in c.edits if e.source == source}

        need_clean, need_src, need_corrupt = needed("base"), needed("source"), needed("corrupted")
        fused = corrupt is None and self.reuse
        if not fused:
            base.clean_logits, base.clean_acts = self._capture_pass(
                {p.index: p.base_ids for p in self.prompts.values()}, need_clean
            )
        with_source = {p.index: p.source_ids for p in self.prompts.values() if p.source_ids is not None}
        if with_source and (need_src or not corrupt):
            base.source_logits, base.source_acts = self._capture_pass(with_source, need_src)
        if corrupt is not None and corrupt.kind == "noise":
            self._draw_noise()
        elif corrupt is not None and corrupt.kind == "replace":
            base.corrupt_ids = self._replacements()
        if corrupt is None and not self.reuse:
            base.corrupt_logits = {p: v.unsqueeze(0).clone() for p, v in base.clean_logits.items()}
            self._verify_shortcuts()
            return base
        # corrupted baseline: the base input with its corruption and no site edits
        empty = [Cell(-1 - p.index, p.index, (), ()) for p in self.prompts.values()]
        acts: dict[tuple[str, int], dict[int, torch.Tensor]] = {}
        for _ in self._baseline_pass(empty, need_corrupt | (need_clean if fused else set()), acts):
            pass  # _outputs stores the corrupted logits of baseline cells
        base.corrupt_acts = {key: acts[key] for key in need_corrupt}  # [samples, seq, dim] per prompt
        if fused:
            base.clean_logits = {p: v[0].clone() for p, v in base.corrupt_logits.items()}
            base.clean_acts = {key: {p: t[0] for p, t in acts[key].items()} for key in need_clean}
        self._verify_shortcuts()
        return base

    def _draw_noise(self) -> None:
        import torch

        corrupt = self.exp.corrupt
        assert corrupt is not None
        self.base.sigma = self._sigma()
        d = self.lm.model.get_input_embeddings().weight.shape[1]
        for p in self.prompts.values():
            n = len(self.plan.corrupt_positions[p.index])
            self.base.noise[p.index] = torch.stack(
                [
                    interventions.noise(self.exp.seed, p.index, s, n, d, corrupt.scale * self.base.sigma)
                    for s in range(self.samples)
                ]
            )

    def _sigma(self) -> float:
        corrupt = self.exp.corrupt
        assert corrupt is not None
        weight = self.lm.model.get_input_embeddings().weight.detach().float()
        if isinstance(corrupt.sigma, float | int) and not isinstance(corrupt.sigma, bool):
            return float(corrupt.sigma)
        if corrupt.sigma == "embeddings":
            return float(weight.std())
        ids = [i for p in self.prompts.values() if p.subject_span for i in p.base_ids[slice(*p.subject_span)]]
        if not ids:
            raise ConfigError(
                [self.cfg.problem(("corrupt", "sigma"), "sigma 'subjects' needs records with a `subject`")]
            )
        return float(weight[ids].std())

    def _replacements(self) -> dict[int, tuple[int, ...]]:
        """Symmetric token replacement: swap each subject for another (`tokenization.replacements`)."""
        from ivx import tokenization

        try:
            return tokenization.replacements(self.lm.tokenizer, list(self.prompts.values()), self.exp.seed)
        except tokenization.TokenizationError as exc:
            raise ConfigError(
                [self.cfg.problem(("corrupt", "kind"), f"prompt {i}: {m}") for i, _, m in exc.problems]
            ) from None

    # ---- cells --------------------------------------------------------------------------------
    def _source_values(self, cell: Cell, edit: Any, site: Site) -> torch.Tensor | None:
        import torch

        key = (edit.component, edit.layer)
        if edit.source == "base":
            return self.base.clean_acts[key][cell.prompt][list(edit.source_positions)]
        if edit.source == "source":
            return self.base.source_acts[key][cell.prompt][list(edit.source_positions)]
        if edit.source == "corrupted":  # [samples, n, dim] → rows in sample-major order
            acts = self.base.corrupt_acts[key][cell.prompt][:, list(edit.source_positions)]
            return acts.reshape(-1, acts.shape[-1])
        n = len(edit.positions)
        if edit.vector is not None:
            vec = self._vector(edit.vector, edit.name).to(self.lm.device)
            if vec.dim() == 1:
                if vec.shape[0] != site.dim:
                    raise ValueError(
                        f"vector {edit.vector!r} has {vec.shape[0]} dims but {edit.component} has {site.dim}"
                    )
                return vec.expand(n, site.dim)
            return vec[:n]
        if edit.kind == "noise":
            weight = self.lm.model.get_input_embeddings().weight
            std = (edit.value if edit.value is not None else 3.0) * float(weight.float().std())
            return interventions.noise(
                self.exp.seed + 1 + edit.index, cell.prompt, cell.index, n, site.dim, std
            )
        return torch.zeros(0)

    def _patches(self, cells: list[Cell], offset: int = 0) -> tuple[list[hooks.Patch], list[tuple]]:
        """All patches of a batch of cells (each with `self.samples` rows), grouped per site+fn."""
        import torch

        S = self.samples
        groups: dict[tuple, dict[str, list]] = defaultdict(lambda: {"rows": [], "pos": [], "src": []})
        collect_index: list[tuple] = []
        bundles: dict[tuple, str | None] = {}
        embed = self.site("embedding", 0) if self.base.noise else None
        for i, cell in enumerate(cells):
            rows = torch.arange(i * S, (i + 1) * S)
            if embed is not None:
                positions = self.plan.corrupt_positions[cell.prompt]
                if positions:
                    g = groups[(embed, "noise", None, 1.0, None, None, "__corrupt__")]
                    g["rows"].append(rows.repeat_interleave(len(positions)))
                    g["pos"].append(torch.tensor(positions).repeat(S))
                    g["src"].append(self.base.noise[cell.prompt].reshape(-1, embed.dim))
            for edit in cell.edits:
                site = self.site(edit.component, edit.layer)
                n = len(edit.positions)
                src = self._source_values(cell, edit, site)
                key = (site, edit.kind, edit.value, edit.coefficient, edit.heads, edit.subspace, edit.name)
                bundles[key] = edit.bundle
                g = groups[key]
                g["rows"].append(rows.repeat_interleave(n))
                g["pos"].append(torch.tensor(edit.positions).repeat(S))
                if edit.source == "corrupted":
                    g["src"].append(src)  # already one block per sample
                elif src is not None and src.numel():
                    g["src"].append(src.repeat(S, 1))
                if edit.kind == "collect":
                    collect_index.append((key, cell.index, edit.name, edit.layer, n))
        patches: list[hooks.Patch] = []
        self._recorders: dict[tuple, list[torch.Tensor]] = {}
        for key, g in groups.items():
            site, kind, value, coefficient, heads, subspace, _name = key
            if kind in TRAINABLE_KINDS:
                fn = self._trained(kind, _name, bundles[key])
            else:
                fn = interventions.for_kind(kind, value=value, coefficient=coefficient)
            if kind == "collect":
                fn = self._recorder(key)
            source = torch.cat(g["src"]).to(self.lm.device) if g["src"] else None
            patches.append(
                hooks.Patch(
                    site=site,
                    rows=torch.cat(g["rows"]).to(self.lm.device),
                    positions=torch.cat(g["pos"]).to(self.lm.device),
                    fn=fn,
                    source=source,
                    heads=heads,
                    subspace=subspace,
                    offset=offset,
                )
            )
        return patches, collect_index

    def _trained(self, kind: str, name: str, ref: str | None) -> Callable:
        """Edit function of a trained intervention, parameters loaded once from its bundle."""
        from ivx import das

        if ref is None:
            raise ValueError(f"intervention {name!r} ({kind}) needs `bundle` with its trained parameters")
        key = f"{kind}:{name}:{ref}"
        if key not in self.trained:
            expect = {"d_model": self.lm.info.d_model, "n_layers": self.lm.info.n_layers}
            params = das.load_params(name, ref, self.cfg.path.parent, expect)
            self.trained[key] = das.edit_fn(kind, {k: v.to(self.lm.device) for k, v in params.items()})
        return self.trained[key]

    def _recorder(self, key: tuple) -> Callable:
        store = self._recorders.setdefault(key, [])

        def fn(current: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
            store.append(current.detach().clone())
            return current

        return fn

    def execute(self, cells: list[Cell], collect_logits: bool = True) -> Iterator[list[CellOutput]]:
        """Run cells in batches; yield each batch's outputs.

        No-op cells are answered from the corrupted baseline; the rest are packed into batched
        forwards by `_schedule` (shared prompt length, reusable prefix, skippable blocks), their
        last positions unembedded together when the head can be deferred.
        """
        import torch

        all_logits = self.exp.output.logits == "all"
        noop = [cell for cell in cells if self._noop(cell)]
        step = max(1, MAX_ROWS // self.samples)  # rows of [vocab] logits held at once, as for a forward
        for start in range(0, len(noop), step):
            chunk = noop[start : start + step]
            self.noop_cells += len(chunk)
            logits = torch.cat([self.base.corrupt_logits[c.prompt] for c in chunk])
            yield self._outputs(chunk, logits.to(self.lm.device), [])
        skipped = {cell.index for cell in noop}
        rest = [cell for cell in cells if cell.index not in skipped]
        for cell in noop:
            group = self._group(self.prompts[cell.prompt].length)
            group["cells"] += 1
            group["noop_cells"] += 1
        defer = not all_logits and self.defers_head()
        pending: list[tuple[list[Cell], torch.Tensor]] = []  # cells whose logits are not yet computed

        def flush() -> list[CellOutput]:
            chunks, hidden = [c for chunk, _ in pending for c in chunk], torch.cat([h for _, h in pending])
            pending.clear()
            return self._outputs(chunks, self._unembed(hidden), [])

        todo = {cell.index for cell in rest}
        # packed over the whole plan, so a cell's batch shape (its reused prefix and skipped
        # blocks) does not depend on which cells are left to do (a resumed run gives the same bits)
        whole = [cell for cell in self.plan.cells if cell.index in todo or not self._noop(cell)]
        for planned, prefix, skip in self._schedule(whole):
            chunk = [cell for cell in planned if cell.index in todo]
            if not chunk:
                continue
            self._count(chunk, prefix, skip)
            ids = torch.tensor(
                [self.base.corrupt_ids.get(c.prompt, self.prompts[c.prompt].base_ids) for c in chunk]
            ).repeat_interleave(self.samples, dim=0)
            patches, collect_index = self._patches(chunk, offset=prefix)
            past = self._past(chunk, prefix) if prefix else None
            states = None
            if skip:
                states = torch.cat([self.states[c.prompt][skip - 1][:, prefix:] for c in chunk])
            if defer and chunk[0].index >= 0 and not collect_index:
                with hooks.patching(self.lm.model, patches), self._skipping(skip, states):
                    hidden = self._final_hidden(ids[:, prefix:], past)
                if sum(len(h) for _, h in pending) + len(hidden) > MAX_ROWS:
                    yield flush()
                pending.append((chunk, hidden))
                continue
            with hooks.patching(self.lm.model, patches), self._skipping(skip, states):
                logits, _ = self.forward(ids[:, prefix:], all_logits and collect_logits, past)
            yield self._outputs(chunk, logits, collect_index)
        if pending:
            yield flush()

    def _baseline_pass(
        self, cells: list[Cell], capture: set[tuple[str, int]], acts: dict
    ) -> Iterator[list[CellOutput]]:
        """Corrupted baseline runs (cells without edits), keeping KV caches and block outputs.

        Activations at the `capture` sites are stored into `acts[key][prompt]` ([samples, seq, d]).
        """
        import torch

        S = self.samples
        state_sites = []
        if self.layer_reuse:
            state_sites = [self.site("block_output", layer) for layer in range(self.lm.info.n_layers)]
        wanted = {key: self.site(*key) for key in capture}
        for key in capture:
            acts[key] = {}
        sites = list(dict.fromkeys([*state_sites, *wanted.values()]))
        by_len: dict[int, list[Cell]] = defaultdict(list)
        for cell in cells:
            by_len[self.prompts[cell.prompt].length].append(cell)
        for length, group in sorted(by_len.items()):
            per_batch = max(1, self.batch_rows(length) // S)
            for start in range(0, len(group), per_batch):
                chunk = group[start : start + per_batch]
                ids = torch.tensor(
                    [self.base.corrupt_ids.get(c.prompt, self.prompts[c.prompt].base_ids) for c in chunk]
                ).repeat_interleave(S, dim=0)
                patches, _ = self._patches(chunk)
                with hooks.patching(self.lm.model, patches), hooks.capturing(self.lm.model, sites) as store:
                    logits, cache = self.forward(ids, keep_cache=self.reuse)
                for i, cell in enumerate(chunk):
                    rows = slice(i * S, (i + 1) * S)
                    if self.reuse:
                        self.caches[cell.prompt] = self._keep_cache(cache, rows)
                    for key, site in wanted.items():
                        acts[key][cell.prompt] = store[site][rows]
                if state_sites:
                    self._keep_states(chunk, store, state_sites)
                yield self._outputs(chunk, logits, [])

    def _schedule(self, cells: list[Cell]) -> list[tuple[list[Cell], int, int]]:
        """Batches (cells, reused prefix, skipped blocks) of the cells that need a forward.

        Per prompt length, two packings are costed with the measured model cost — continuing
        from the baseline's KV cache (cells grouped by their first edited position) or full
        recomputation (any position together) — and the cheaper one runs. Within either, cells
        sorted by their first edited layer are split where skipping blocks saves more than
        a separate forward costs (`schedule.partition`).
        """
        by_len: dict[int, list[Cell]] = defaultdict(list)
        for cell in cells:
            by_len[self.prompts[cell.prompt].length].append(cell)
        out: list[tuple[list[Cell], int, int]] = []
        for length, group in sorted(by_len.items()):
            options: dict[str, tuple[float, list[tuple[list[Cell], int, int]]]] = {}
            options["full"] = self._pack(group, length, 0)
            by_prefix: dict[int, list[Cell]] = defaultdict(list)
            for cell in group:
                by_prefix[self._prefix(cell)].append(cell)
            if len(by_prefix) > 1 or 0 not in by_prefix:
                packs = [self._pack(part, length, prefix) for prefix, part in sorted(by_prefix.items())]
                options["prefix_reuse"] = (sum(p[0] for p in packs), [b for p in packs for b in p[1]])
            choice = min(options, key=lambda k: options[k][0])
            batches = options[choice][1]
            record = self._group(length)
            record["packing"] = choice
            record["estimated_seconds"] = {k: round(v[0], 4) for k, v in options.items()}
            out.extend(batches)
        return out

    def _group(self, length: int) -> dict[str, Any]:
        """The manifest's record of the cells of one prompt length: what ran, and how."""
        for group in self.report["groups"]:
            if group["length"] == length:
                return group
        group = {
            "length": length,
            "cells": 0,
            "noop_cells": 0,
            "forwards": 0,
            "cells_after_prefix": 0,
            "cells_skipping_blocks": 0,
        }
        self.report["groups"].append(group)
        self.report["groups"].sort(key=lambda g: g["length"])
        return group

    def _count(self, chunk: list[Cell], prefix: int, skip: int) -> None:
        group = self._group(self.prompts[chunk[0].prompt].length)
        group["cells"] += len(chunk)
        group["forwards"] += 1
        group["cells_after_prefix"] += len(chunk) if prefix else 0
        group["cells_skipping_blocks"] += len(chunk) if skip else 0

    def _pack(
        self, cells: list[Cell], length: int, prefix: int
    ) -> tuple[float, list[tuple[list[Cell], int, int]]]:
        """Estimated seconds and batches of cells continuing after `prefix` reused tokens."""
        from ivx import schedule

        tokens = length - prefix
        ordered = sorted(cells, key=self._skip) if self.layer_reuse else list(cells)
        skips = [self._skip(c) for c in ordered]
        cost = self.cost() if (self.reuse or self.layer_reuse) else schedule.Cost(1.0, 0.0)
        batches, seconds = schedule.partition(
            skips, self.lm.info.n_layers, self.samples, tokens, self.batch_rows(tokens), cost
        )
        return seconds, [(ordered[b.start : b.end], prefix, b.skip) for b in batches]

    def _outputs(
        self, chunk: list[Cell], logits: torch.Tensor, collect_index: list[tuple]
    ) -> list[CellOutput]:
        import torch

        S = self.samples
        last = logits if logits.dim() == 2 else logits[:, -1]
        if all(c.index < 0 for c in chunk):  # corrupted baselines: kept, no metric rows
            for i, cell in enumerate(chunk):
                self.base.corrupt_logits[cell.prompt] = last[i * S : (i + 1) * S].cpu()
            return []

        def ids_of(attr: str) -> torch.Tensor:
            raw = [getattr(self.prompts[c.prompt], attr) for c in chunk]
            return torch.tensor([-1 if v is None else v for v in raw]).repeat_interleave(S)

        target, foil = ids_of("target_id"), ids_of("foil_id")
        ref = None
        if "kl" in self.exp.metrics:
            ref = torch.stack([self.base.reference_logits(c.prompt) for c in chunk]).repeat_interleave(S, 0)
        values = metrics.row_values(last.cpu(), target, foil, ref, rank="target_rank" in self.exp.metrics)
        collected: dict[int, dict[str, torch.Tensor]] = defaultdict(dict)
        offsets: dict[tuple, int] = defaultdict(int)
        for key, cell_index, name, layer, n in collect_index:
            stacked = torch.cat(self._recorders[key])
            at = offsets[key]
            part = stacked[at : at + n * S].view(S, n, -1).mean(0)
            offsets[key] = at + n * S
            collected[cell_index][f"{name}.cell{cell_index}.layer{layer}"] = part.cpu()
        outputs = []
        for i, cell in enumerate(chunk):
            rows = slice(i * S, (i + 1) * S)
            if cell.index < 0:  # corrupted baseline
                self.base.corrupt_logits[cell.prompt] = last[rows].cpu()
                continue
            mean = {k: float(v[rows].mean()) for k, v in values.items()}
            outputs.append(
                CellOutput(
                    cell=cell,
                    row=self._row(cell, mean, last[rows]),
                    logits=logits[rows].mean(0).cpu(),
                    collected=collected.get(cell.index, {}),
                )
            )
        return outputs

    def reference_values(self, prompt: int) -> tuple[dict[str, float], dict[str, float]]:
        """(corrupted, clean) sample-averaged metric values of one prompt (computed once)."""
        if prompt not in self._reference and prompt in self.base.corrupt_logits:
            self._reference[prompt] = self._reference_values(prompt)
        return self._reference.get(prompt) or self._reference_values(prompt)

    def _reference_values(self, prompt: int) -> tuple[dict[str, float], dict[str, float]]:
        import torch

        p = self.prompts[prompt]
        corrupt = self.base.corrupt_logits.get(prompt)
        if corrupt is None:
            corrupt = self.base.clean_logits[prompt].unsqueeze(0)
        clean = self.base.reference_logits(prompt).unsqueeze(0)
        t = torch.tensor([p.target_id if p.target_id is not None else -1])
        f = torch.tensor([p.foil_id if p.foil_id is not None else -1])
        cv = metrics.row_values(corrupt, t.repeat(len(corrupt)), f.repeat(len(corrupt)))
        kv = metrics.row_values(clean, t, f)
        return {k: float(v.mean()) for k, v in cv.items()}, {k: float(v.mean()) for k, v in kv.items()}

    def _row(self, cell: Cell, patched: dict[str, float], last: torch.Tensor) -> dict[str, Any]:
        corrupted, clean = self.reference_values(cell.prompt)
        names = [m for m in self.exp.metrics if m != "top_k"]
        row: dict[str, Any] = {"cell": cell.index, "prompt_index": cell.prompt, **dict(cell.point)}
        row.update(metrics.cell_values(names, patched, corrupted, clean))
        if "target_prob" in patched and self.prompts[cell.prompt].target_id is not None:
            row["p_clean"] = clean["target_prob"]
            row["p_corrupted"] = corrupted["target_prob"]
        if "top_k" in self.exp.metrics:
            import torch

            probs = torch.softmax(last.float(), dim=-1).mean(0)
            row["top_k"] = metrics.top_k(probs, self.exp.output.top_k, self.lm.tokenizer)
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
