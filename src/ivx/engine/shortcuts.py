"""The forward passes ivx's exact shortcuts run, and the probes that prove each one on the loaded model.

- **prefix reuse**: a cell's positions before its first edit equal the baseline run's, so the
  cell continues from the baseline's KV cache;
- **layer reuse**: blocks below a cell's first edited layer return the baseline's outputs;
- **deferred unembedding**: cells run the backbone, the LM head runs once for many cells;
- **final-block trimming**: with the head deferred, the last block's output projection and MLP
  run on the last position only (`ivx.trim`).

Each relies on an API of transformers (the cache argument, how blocks are called, what the head
computes). A release that changes one must not silently change numbers or speed, so every run
checks them on its first prompt before any cell runs (`shortcut_state.ShortcutState.verify`): the
corrupted baseline recomputed through all enabled shortcuts at once (half the prompt from its KV
cache, block 0 skipped, the head deferred) must reproduce its plain-forward logits; on a
mismatch each shortcut is checked alone and the failing ones are switched off, with the reason
recorded (manifest `shortcuts`) and printed.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from ivx.model import components, kvcache
from ivx.plan import schedule

if TYPE_CHECKING:
    import torch

    from ivx.model.loading import LoadedModel


def forward(
    lm: LoadedModel,
    ids: torch.Tensor,
    all_logits: bool = False,
    past: Any = None,
    keep_cache: bool = False,
    start: int = 0,
) -> tuple[torch.Tensor, Any]:
    """Logits of equal-length rows, [b, vocab] (last position) or [b, s, vocab], and the new cache.

    With `past`, `ids` continue a cached prefix; with `keep_cache`, the returned cache is kept;
    `start` > 0 passes the positions explicitly (see `_continuing`).
    """
    model = lm.model
    kwargs: dict[str, Any] = {"input_ids": ids.to(lm.device), "use_cache": keep_cache or past is not None}
    if past is not None:
        kwargs[kvcache.argument(model.forward)] = past
        _continuing(model.forward, kwargs, start)
    if not all_logits and _accepts(model.forward, "logits_to_keep"):
        kwargs["logits_to_keep"] = 1
    out = model(**kwargs)
    logits = out.logits.float() if all_logits else out.logits[:, -1].float()
    return logits, (kvcache.returned(out) if keep_cache else None)


def final_hidden(lm: LoadedModel, ids: torch.Tensor, past: Any = None, start: int = 0) -> torch.Tensor:
    """The backbone's last-position output (after the final norm): [b, d]."""
    backbone = _backbone(lm.model)
    kwargs: dict[str, Any] = {"input_ids": ids.to(lm.device), "use_cache": past is not None}
    if past is not None:
        kwargs[kvcache.argument(backbone.forward)] = past
        _continuing(backbone.forward, kwargs, start)
    out = backbone(**kwargs)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return hidden[:, -1]


def _continuing(forward: Any, kwargs: dict[str, Any], start: int) -> None:
    """Positions start.. for a continuation, where the model takes them: a recomputed recurrent
    prefix cache cannot tell its length (hybrids such as Bamba would number the new tokens from 0)."""
    if start and _accepts(forward, "position_ids"):
        import torch

        ids = kwargs["input_ids"]
        kwargs["position_ids"] = torch.arange(start, start + ids.shape[1], device=ids.device).expand(
            len(ids), -1
        )


def unembed(lm: LoadedModel, hidden: torch.Tensor) -> torch.Tensor:
    """Logits of backbone outputs: [b, vocab].

    Through the model's own forward with its backbone answering `hidden`, so whatever the model
    does after its head (Cohere's logit scale, Gemma's soft-cap, Granite's scaling, FalconH1's
    multiplier) is done here too. A model whose forward does not call its backbone as a whole
    (decoder wrappers call `model.decoder`) gets its output embedding alone.
    """
    import torch

    model = lm.model
    backbone = _backbone(model)
    if backbone is model or _HEAD_ONLY.get(type(model), False):
        return model.get_output_embeddings()(hidden).float()
    answered: list[bool] = []

    def answer(*args: Any, **kwargs: Any) -> Any:
        answered.append(True)
        return _answer_type()(last_hidden_state=hidden[:, None])  # [b, 1, d]

    backbone.forward = answer
    try:
        ids = torch.zeros((hidden.shape[0], 1), dtype=torch.long, device=hidden.device)
        logits = model(input_ids=ids, use_cache=False).logits[:, -1].float()
    finally:
        backbone.__dict__.pop("forward", None)
    _HEAD_ONLY[type(model)] = not answered
    return logits if answered else model.get_output_embeddings()(hidden).float()


def _backbone(model: Any) -> Any:
    """The model's backbone: `base_model`, or (when its prefix names no attribute, as Llama 4's
    `language_model`) the first child that is a transformers model itself."""
    backbone = model.base_model
    if backbone is not model:
        return backbone
    from transformers import PreTrainedModel

    return next((m for m in model.children() if isinstance(m, PreTrainedModel)), model)


_HEAD_ONLY: dict[type, bool] = {}  # per model class: its forward never called the backbone's


@functools.cache
def _answer_type() -> type:
    """A backbone output holding only the last hidden state; any other field reads as None."""
    from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions

    class Answer(BaseModelOutputWithPastAndCrossAttentions):
        def __getattr__(self, name: str) -> Any:
            if name.startswith("__"):
                raise AttributeError(name)
            return None

    return Answer


def _accepts(fn: Any, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def estimate(lm: LoadedModel) -> schedule.Cost:
    """The cost model of this model on its device: seconds per block run and per token-block.

    Computed from the first block's parameter count and device constants (`schedule.device_cost`),
    not timed: the packing it chooses decides which rows share a forward, and a choice that
    followed the machine's load would make results differ in their last bits from run to run and
    on resume.
    """

    block = components.blocks(lm.model)[0]
    params = sum(p.numel() for p in block.parameters())
    width = next(block.parameters()).element_size()
    return schedule.device_cost(params, width, lm.device.type)


NAMES = {
    "prefix_reuse": "prefix reuse",
    "layer_reuse": "layer reuse",
    "skip_noop": "no-op cells",
    "defer_head": "deferred head",
    "trim_final": "final-block trimming",
}


def describe(report: dict[str, Any]) -> list[str]:
    """Terminal lines: which shortcuts ran per prompt length, and a warning for each that could not."""
    state = report.get("shortcuts", {})
    flags = ", ".join(f"{NAMES[k]} {'on' if v['on'] else 'off'}" for k, v in state.items())
    lines = [f"shortcuts (transformers {report.get('transformers', '?')}): {flags}"]
    for g in report.get("groups", []):
        lines.append(
            f"  {g['length']} tokens: {g['cells']} cells, {g['noop_cells']} no-op, "
            f"{g['forwards']} forwards ({g.get('packing', '-')}); {g.get('cells_after_prefix', 0)} after a "
            f"reused prefix, {g.get('cells_skipping_blocks', 0)} skipping blocks"
        )
    for name, value in state.items():
        why = value.get("why", "")
        if not value["on"] and not why.startswith("off in config"):
            lines.append(f"warning: {NAMES[name]} is off: {why}")
    return lines
