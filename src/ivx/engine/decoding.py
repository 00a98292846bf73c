"""Token-by-token decoding with planned edits: left-padded batches, KV cache or full recompute.

Positions always refer to the unpadded prompt (token 0 = its first token), with or without the
KV cache: with the cache, prompt-position edits happen once during the prompt's forward pass and
live on in the cached keys/values; without it, every step recomputes the whole sequence and the
same edits are applied again, so both give identical tokens. `on: generated` edits every newly
generated token; `on: all` does both. Noise is drawn per (record, unpadded column), so it is the
same whichever step computes a column.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ivx.core import interventions
from ivx.engine.patches import Placed, build, group_key
from ivx.model import hooks, kvcache
from ivx.plan import tokenization

if TYPE_CHECKING:
    import torch

    from ivx.config.settings import Generate
    from ivx.core.interventions import EditFn
    from ivx.model.components import Site
    from ivx.model.hooks import Patch
    from ivx.model.loading import LoadedModel
    from ivx.plan.edits import Edit


@dataclass(frozen=True, eq=False)
class Bound:
    """One planned edit of one prompt, with the tensors generation writes for it."""

    prompt: int  # index into the texts being generated
    record: int  # the prompt record's index (seeds its noise)
    edit: Edit
    site: Site
    fn: EditFn
    source: torch.Tensor | None  # [len(edit.positions), dim]: values at the prompt positions
    vector: torch.Tensor | None  # [dim]: the value written at each generated token (steering)
    noise_std: float | None = None  # kind noise: std of the Gaussian draws
    noise_seed: int = 0

    def value_at(self, column: int, k: int | None) -> torch.Tensor | None:
        """The source value at unpadded `column` (the k-th prompt position, or a generated token)."""

        if self.noise_std is not None:
            return interventions.noise(
                self.noise_seed, self.record, column, 1, self.site.dim, self.noise_std
            )[0]
        if k is not None and self.source is not None:
            return self.source[k]
        return self.vector if k is None else None


def _placed(item: Bound, r: int, pad: int, width: int, start: int, end: int) -> Any:
    """`item` placed in batch row r for the columns [start, end), or None when none fall there."""
    import torch

    cols: list[int] = []
    values: list[torch.Tensor | None] = []
    if item.edit.on in ("prompt", "all"):
        for k, p in enumerate(item.edit.positions):
            if start <= pad + p < end:
                cols.append(pad + p)
                values.append(item.value_at(p, k))
    if item.edit.on in ("generated", "all"):
        for col in range(max(start, width), end):
            cols.append(col)
            values.append(item.value_at(col - pad, None))
    if not cols:
        return None
    given = [v for v in values if v is not None]
    source = torch.stack(given) if given and len(given) == len(values) else None
    return Placed(item.edit, torch.full((len(cols),), r), torch.tensor(cols), source)


def step_patches(
    items: list[Bound], rows: list[int], pad: list[int], width: int, start: int, end: int, device: Any
) -> list[Patch]:
    """Patches for the columns [start, end) of a left-padded batch (rows map to prompts)."""

    sites = {(b.edit.component, b.edit.layer): b.site for b in items}
    fns = {group_key(b.edit): b.fn for b in items}
    by_prompt: dict[int, list[Bound]] = {}
    for item in items:
        by_prompt.setdefault(item.prompt, []).append(item)
    placed = []
    for r, prompt in enumerate(rows):
        for item in by_prompt.get(prompt, []):
            one = _placed(item, r, pad[r], width, start, end)
            if one is not None:
                placed.append(one)
    return build(placed, lambda c, lay: sites[(c, lay)], lambda e: fns[group_key(e)], start, device)


def _choose(logits: torch.Tensor, settings: Generate, gen: torch.Generator) -> torch.Tensor:
    import torch

    if not settings.do_sample:
        return logits.argmax(-1)
    logits = logits / settings.temperature
    if settings.top_k is not None:
        kth = torch.topk(logits, min(settings.top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if settings.top_p is not None:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = torch.softmax(sorted_logits, -1).cumsum(-1)
        drop = cum - torch.softmax(sorted_logits, -1) > settings.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=gen).squeeze(-1)


@dataclass
class _State:
    """What decoding has produced so far, per batch row."""

    chosen: list[list[int]]
    probs: list[list[float]]
    done: torch.Tensor  # [rows] bool
    streamed: str = ""


def _record(
    state: _State,
    next_ids: torch.Tensor,
    p_next: torch.Tensor,
    tok: Any,
    settings: Generate,
    stream: Callable[[str], object] | None,
) -> None:
    """Append this step's tokens to unfinished rows; mark rows that hit EOS or a stop string."""
    for r in range(len(state.chosen)):
        if not state.done[r]:
            state.chosen[r].append(int(next_ids[r]))
            state.probs[r].append(round(float(p_next[r]), 6))
    _stream(state, tok, stream)
    if tok.eos_token_id is not None:
        state.done |= next_ids == tok.eos_token_id
    for r in range(len(state.chosen)):
        if any(s in tok.decode(state.chosen[r]) for s in settings.stop):
            state.done[r] = True


def _stream(state: _State, tok: Any, stream: Callable[[str], object] | None) -> None:
    if stream is not None and len(state.chosen) == 1 and not state.done[0]:
        text = tok.decode(state.chosen[0], skip_special_tokens=True)
        stream(text[len(state.streamed) :])
        state.streamed = text


def run_generation(
    lm: LoadedModel,
    texts: list[str],
    items: list[Bound],
    settings: Generate,
    seed: int,
    stream: Callable[[str], object] | None = None,
    bos: bool = False,
) -> list[dict[str, Any]]:
    """Generate for every prompt (× num_return_sequences) with `items` applied; left padding."""
    import torch

    tok = lm.tokenizer
    rows = [i for i in range(len(texts)) for _ in range(settings.num_return_sequences)]
    prompt_ids = [tokenization.ids(tok, texts[i], bos) for i in rows]
    width = max(len(p) for p in prompt_ids)
    pad = [width - len(p) for p in prompt_ids]
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.tensor([[pad_id] * pad[r] + p for r, p in enumerate(prompt_ids)], device=lm.device)
    mask = torch.tensor([[0] * pad[r] + [1] * len(p) for r, p in enumerate(prompt_ids)], device=lm.device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    state = _State([[] for _ in rows], [[] for _ in rows], torch.zeros(len(rows), dtype=torch.bool))
    past = None
    with torch.inference_mode():
        for _ in range(settings.max_new_tokens):
            total = ids.shape[1]
            start = total - 1 if (settings.use_cache and past is not None) else 0
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)[:, start:]
            patches = step_patches(items, rows, pad, width, start, total, lm.device)
            cached: dict[str, Any] = {kvcache.argument(lm.model.forward): past} if past is not None else {}
            with hooks.patching(lm.model, patches):
                out = lm.model(
                    input_ids=ids[:, start:],
                    attention_mask=mask,
                    position_ids=position_ids,
                    use_cache=settings.use_cache,
                    **cached,
                )
            past = kvcache.returned(out) if settings.use_cache else None
            logits = out.logits[:, -1].float()
            next_ids = _choose(logits, settings, gen).cpu()
            p_next = torch.softmax(logits, -1).cpu().gather(1, next_ids[:, None]).squeeze(1)
            next_ids = torch.where(state.done, torch.full_like(next_ids, pad_id), next_ids)
            _record(state, next_ids, p_next, tok, settings, stream)
            ids = torch.cat([ids, next_ids[:, None].to(lm.device)], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            if bool(state.done.all()):
                break
    return [_result(tok, prompt, state.chosen[r], state.probs[r], settings) for r, prompt in enumerate(rows)]


def _result(
    tok: Any, prompt: int, chosen: list[int], probs: list[float], settings: Generate
) -> dict[str, Any]:
    text = tok.decode(chosen, skip_special_tokens=True)
    for s in settings.stop:
        if s in text:
            text = text[: text.index(s)]
    return {"prompt_index": prompt, "token_ids": chosen, "text": text, "probs": probs}
