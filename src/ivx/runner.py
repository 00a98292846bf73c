"""Execute a plan: baseline runs once per prompt, then cells packed into batched forwards.

Every batch row carries its own sites: cells are grouped by prompt length (no padding, so
numbers equal single-sequence runs), and all edits of one (site, intervention) across the
batch become a single vectorised `Patch`. Clean and source activations are captured once per
prompt; corruption noise is drawn per (prompt, sample) from a seeded generator, independent
of batching.
"""

from __future__ import annotations

import inspect
import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ivx import hooks, interventions, metrics
from ivx.config import ConfigError, LoadedConfig
from ivx.plan import Cell, Plan
from ivx.positions import TokenizedPrompt
from ivx.schema import TRAINABLE_KINDS

if TYPE_CHECKING:
    import torch

    from ivx.components import Site
    from ivx.models import LoadedModel

MAX_ROWS = 512


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
        self.keep_logits = "logits_to_keep" in inspect.signature(lm.model.forward).parameters
        self.base = Baselines()
        self.reuse = self.exp.batch.prefix_reuse and self.exp.output.logits != "all"
        info = lm.info
        state_bytes = sum(4 * info.n_layers * self.samples * p.length * info.d_model for p in prompts)
        self.layer_reuse = (
            self.reuse and self.exp.batch.layer_reuse and state_bytes < self.exp.batch.memory_gb * 2**29
        )
        self.states: dict[int, torch.Tensor] = {}  # per prompt: baseline block outputs [layers, S, seq, d]
        self.skip_noop = self.exp.batch.skip_noop and self.exp.output.logits != "all"
        self.noop_cells = 0  # cells answered by the corrupted baseline without a forward pass
        self._divergences: dict[tuple[int, str], int] = {}
        self.caches: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}  # per prompt, per layer

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
        """Logits of a batch of equal-length rows: [b, vocab] (last position) or [b, s, vocab].

        With `past`, `ids` continue a cached prefix; with `keep_cache`, the new cache is returned.
        """
        kwargs: dict[str, Any] = {
            "input_ids": ids.to(self.lm.device),
            "use_cache": keep_cache or past is not None,
        }
        if past is not None:
            kwargs["past_key_values"] = past
        if self.keep_logits and not all_logits:
            kwargs["logits_to_keep"] = 1
        out = self.lm.model(**kwargs)
        logits = out.logits.float() if all_logits else out.logits[:, -1].float()
        return logits, (out.past_key_values if keep_cache else None)

    # ---- deferred unembedding ------------------------------------------------------------
    def _final_hidden(self, ids: torch.Tensor, past: Any = None) -> torch.Tensor:
        """The backbone's last-position output (after the final norm): [b, d]."""
        kwargs: dict[str, Any] = {"input_ids": ids.to(self.lm.device), "use_cache": past is not None}
        if past is not None:
            kwargs["past_key_values"] = past
        out = self.lm.model.base_model(**kwargs)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return hidden[:, -1]

    def _unembed(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm.model.get_output_embeddings()(hidden).float()

    def defers_head(self) -> bool:
        """Whether logits are exactly `lm_head(backbone output)` for this model (probed once).

        Then cells run the backbone only and the unembedding (a vocab × d matrix, the largest
        read of a small batch on CPU) runs once for many cells. Models that scale or cap their
        logits after the head (Gemma 2's soft-capping, ...) fail the probe and keep the full path.
        """
        if not hasattr(self, "_defer_head"):
            import torch

            ok = False
            model = self.lm.model
            if model.base_model is not model and model.get_output_embeddings() is not None:
                ids = torch.arange(5, dtype=torch.long).unsqueeze(0) % self.lm.info.vocab_size
                try:
                    with torch.inference_mode():
                        full = model(input_ids=ids.to(self.lm.device)).logits[:, -1].float()
                        mine = self._unembed(self._final_hidden(ids))
                    ok = full.shape == mine.shape and bool(torch.allclose(full, mine, rtol=1e-4, atol=1e-5))
                except Exception:  # an unusual backbone signature: keep the full forward
                    ok = False
            self._defer_head = ok and self.exp.batch.defer_head
        return self._defer_head

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

    @contextmanager
    def _skipping(self, count: int, states: torch.Tensor) -> Iterator[None]:
        """Make blocks 0..count-1 return `states` (the baseline's output of block count-1)."""
        from ivx import components

        if not count:
            yield
            return
        skipped = components.blocks(self.lm.model)[:count]
        # a block may already carry an instance-level forward (accelerate's device hooks wrap it
        # that way): keep it and put it back, never delete what ivx did not set
        saved = [(block, block.__dict__.get("forward")) for block in skipped]
        try:
            for block in skipped:
                block.forward = lambda *args, **kwargs: states  # noqa: ARG005
            yield
        finally:
            for block, previous in saved:
                if previous is None:
                    block.__dict__.pop("forward", None)
                else:
                    block.forward = previous

    def _blocks_return_tuples(self) -> bool:
        """Whether decoder blocks return a tuple (then their forward cannot be short-cut)."""
        if not hasattr(self, "_tuple_blocks"):
            import torch

            from ivx import components

            seen: list[bool] = []
            block = components.blocks(self.lm.model)[0]
            handle = block.register_forward_hook(lambda m, a, out: seen.append(isinstance(out, tuple)))
            try:
                with torch.inference_mode():
                    self.lm.model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=self.lm.device))
            finally:
                handle.remove()
            self._tuple_blocks = bool(seen and seen[0])
        return self._tuple_blocks

    def _keep_states(self, chunk: list[Cell], store: dict, sites: list) -> None:
        import torch

        S = self.samples
        stacked = torch.stack([store[site] for site in sites])  # [layers, rows, seq, d]
        for i, cell in enumerate(chunk):
            self.states[cell.prompt] = stacked[:, i * S : (i + 1) * S].clone()

    def _keep_cache(self, cache: Any, rows: slice) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if hasattr(cache, "layers"):
            pairs = [(layer.keys, layer.values) for layer in cache.layers]
        else:  # older transformers
            pairs = list(zip(cache.key_cache, cache.value_cache, strict=True))
        return [(k[rows].clone(), v[rows].clone()) for k, v in pairs]

    def _past(self, chunk: list[Cell], prefix: int) -> Any:
        import torch
        from transformers import DynamicCache

        try:
            cache = DynamicCache(config=self.lm.model.config)
        except TypeError:
            cache = DynamicCache()
        for layer in range(len(self.caches[chunk[0].prompt])):
            keys = torch.cat([self.caches[c.prompt][layer][0][:, :, :prefix] for c in chunk])
            values = torch.cat([self.caches[c.prompt][layer][1][:, :, :prefix] for c in chunk])
            cache.update(keys, values, layer)
        return cache

    def batch_rows(self, length: int) -> int:
        """Rows per forward pass from the memory budget (or the configured size)."""
        size = self.exp.batch.size
        if size != "auto":
            return int(size)
        info = self.lm.info
        d_mlp = info.d_mlp or 4 * info.d_model
        per_row = 4 * length * (8 * info.d_model + 2 * d_mlp + info.n_heads * length)
        per_row += 4 * info.vocab_size * (length if self.exp.output.logits == "all" else 1)
        budget = self.exp.batch.memory_gb * 2**30
        return max(1, min(MAX_ROWS, int(budget // per_row)))

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
        """Capture clean and source activations once per prompt and run the corrupted baseline."""
        import torch

        base = self.base
        if self.layer_reuse:
            self._blocks_return_tuples()  # probe once, before any capture is active
        self.defers_head()
        need_clean = {(e.component, e.layer) for c in self.plan.cells for e in c.edits if e.source == "base"}
        need_src = {(e.component, e.layer) for c in self.plan.cells for e in c.edits if e.source == "source"}
        base.clean_logits, base.clean_acts = self._capture_pass(
            {p.index: p.base_ids for p in self.prompts.values()}, need_clean
        )
        with_source = {p.index: p.source_ids for p in self.prompts.values() if p.source_ids is not None}
        if with_source and (need_src or not self.exp.corrupt):
            base.source_logits, base.source_acts = self._capture_pass(with_source, need_src)
        corrupt = self.exp.corrupt
        if corrupt is not None and corrupt.kind == "noise":
            base.sigma = self._sigma()
            d = self.lm.model.get_input_embeddings().weight.shape[1]
            for p in self.prompts.values():
                n = len(self.plan.corrupt_positions[p.index])
                base.noise[p.index] = torch.stack(
                    [
                        interventions.noise(self.exp.seed, p.index, s, n, d, corrupt.scale * base.sigma)
                        for s in range(self.samples)
                    ]
                )
        elif corrupt is not None and corrupt.kind == "replace":
            base.corrupt_ids = self._replacements()
        # corrupted baseline: the base input with its corruption and no site edits
        if corrupt is None and not self.reuse:
            base.corrupt_logits = {p: v.unsqueeze(0).clone() for p, v in base.clean_logits.items()}
            return base
        empty = [Cell(-1 - p.index, p.index, (), ()) for p in self.prompts.values()]
        need_corrupt = {
            (e.component, e.layer) for c in self.plan.cells for e in c.edits if e.source == "corrupted"
        }
        if not need_corrupt:
            for _ in self.execute(empty, collect_logits=False):
                pass  # _outputs stores the corrupted logits of baseline cells
            return base
        sites = {key: self.site(*key) for key in need_corrupt}
        base.corrupt_acts = {key: {} for key in need_corrupt}
        for cell in empty:  # one prompt at a time: its samples' activations are kept
            with hooks.capturing(self.lm.model, list(sites.values())) as store:
                for _ in self.execute([cell], collect_logits=False):
                    pass
            for key, site in sites.items():
                base.corrupt_acts[key][cell.prompt] = store[site]  # [samples, seq, dim]
        return base

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

        No-op cells are answered from the corrupted baseline; the rest are grouped by (prompt
        length, reusable prefix, skippable blocks) and run as batched forwards, their last
        positions unembedded together when the head can be deferred.
        """
        import torch

        S = self.samples
        all_logits = self.exp.output.logits == "all"
        noop = [cell for cell in cells if self._noop(cell)]
        step = max(1, MAX_ROWS // S)  # rows of [vocab] logits held at once, as for a forward
        for start in range(0, len(noop), step):
            chunk = noop[start : start + step]
            self.noop_cells += len(chunk)
            logits = torch.cat([self.base.corrupt_logits[c.prompt] for c in chunk])
            yield self._outputs(chunk, logits.to(self.lm.device), [])
        skipped = {cell.index for cell in noop}
        by_shape: dict[tuple[int, int, int], list[Cell]] = defaultdict(list)
        for cell in cells:
            if cell.index in skipped:
                continue
            key = (self.prompts[cell.prompt].length, self._prefix(cell), self._skip(cell))
            by_shape[key].append(cell)
        state_sites = []
        if self.layer_reuse:
            state_sites = [self.site("block_output", layer) for layer in range(self.lm.info.n_layers)]
        defer = not all_logits and self.defers_head()
        pending: list[tuple[list[Cell], torch.Tensor]] = []  # cells whose logits are not yet computed

        def flush() -> list[CellOutput]:
            chunks, hidden = [c for chunk, _ in pending for c in chunk], torch.cat([h for _, h in pending])
            pending.clear()
            return self._outputs(chunks, self._unembed(hidden), [])

        for (length, prefix, skip), group in sorted(by_shape.items()):
            per_batch = max(1, self.batch_rows(length - prefix) // S)
            for start in range(0, len(group), per_batch):
                chunk = group[start : start + per_batch]
                ids = torch.tensor(
                    [self.base.corrupt_ids.get(c.prompt, self.prompts[c.prompt].base_ids) for c in chunk]
                ).repeat_interleave(S, dim=0)
                patches, collect_index = self._patches(chunk, offset=prefix)
                past = self._past(chunk, prefix) if prefix else None
                baseline = self.reuse and chunk[0].index < 0
                states = None
                if skip:
                    states = torch.cat([self.states[c.prompt][skip - 1][:, prefix:] for c in chunk])
                if defer and not baseline and not collect_index:
                    with hooks.patching(self.lm.model, patches), self._skipping(skip, states):
                        hidden = self._final_hidden(ids[:, prefix:], past)
                    if sum(len(h) for _, h in pending) + len(hidden) > MAX_ROWS:
                        yield flush()
                    pending.append((chunk, hidden))
                    continue
                with (
                    hooks.patching(self.lm.model, patches),
                    hooks.capturing(self.lm.model, state_sites if baseline else []) as store,
                    self._skipping(skip, states),
                ):
                    logits, cache = self.forward(
                        ids[:, prefix:], all_logits and collect_logits, past, keep_cache=baseline
                    )
                if baseline:
                    for i, cell in enumerate(chunk):
                        self.caches[cell.prompt] = self._keep_cache(cache, slice(i * S, (i + 1) * S))
                    if state_sites and not self._blocks_return_tuples():
                        self._keep_states(chunk, store, state_sites)
                    elif state_sites:  # older transformers: blocks return tuples; skipping is unsafe
                        self.layer_reuse, state_sites = False, []
                yield self._outputs(chunk, logits, collect_index)
        if pending:
            yield flush()

    def _outputs(
        self, chunk: list[Cell], logits: torch.Tensor, collect_index: list[tuple]
    ) -> list[CellOutput]:
        import torch

        S = self.samples
        last = logits if logits.dim() == 2 else logits[:, -1]

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
