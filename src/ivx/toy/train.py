"""Train ivx-toy: a 4-layer GPT-2 (d_model 128) on the toy world's facts and IOI task, on CPU.

The loss is next-token cross entropy over whole passages: a fact in a training template followed
by a second attribute of the same subject ("...; it uses the language X ."), so attributes are
read off one subject mention several times — which makes the model enrich the subject's own
tokens (ROME's subject site) instead of looking facts up at the last token only. Facts are seen
only through the training templates; accuracy is measured on held-out templates (facts) and
held-out name pairs with a held-out template (IOI). Training fails loudly below the bar.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ivx.toy import tokenizer as toy_tokenizer
from ivx.toy import world as toy_world

BAR = {"facts": 0.95, "ioi": 0.95}


@dataclass(frozen=True)
class Settings:
    """Training hyper-parameters (recorded in the model card)."""

    seed: int = 0
    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    steps: int = 2500
    batch_size: int = 96
    lr: float = 2e-3
    warmup: int = 200
    weight_decay: float = 0.01
    ioi_fraction: float = 0.35
    threads: int = 2


def _encode(tok: Any, records: list[dict[str, str]]) -> list[tuple[list[int], int]]:
    out = []
    for record in records:
        ids = tok(record["base"], add_special_tokens=False)["input_ids"]
        target = tok(record["target"], add_special_tokens=False)["input_ids"][0]
        out.append((ids, target))
    return out


def _batch(examples: list[tuple[list[int], int]], pad: int) -> tuple[Any, Any, Any]:
    import torch

    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad, dtype=torch.long)
    for i, (seq, _) in enumerate(examples):
        ids[i, : len(seq)] = torch.tensor(seq)
    last = torch.tensor([len(seq) - 1 for seq, _ in examples])
    target = torch.tensor([t for _, t in examples])
    return ids, last, target


def accuracy(model: Any, tok: Any, records: list[dict[str, str]], batch: int = 256) -> float:
    """Greedy top-1 accuracy of the answer's first token (right padding, causal: exact)."""
    import torch

    examples = _encode(tok, records)
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(examples), batch):
            ids, last, target = _batch(examples[i : i + batch], tok.pad_token_id)
            logits = model(input_ids=ids).logits[torch.arange(len(ids)), last]
            correct += int((logits.argmax(-1) == target).sum())
    return correct / max(1, len(examples))


def evaluate(model: Any, tok: Any, world: toy_world.World) -> dict[str, float]:
    """Held-out accuracy per task."""
    facts = toy_world.fact_prompts(world, "heldout")
    return {
        "facts": accuracy(model, tok, facts),
        "facts_city": accuracy(model, tok, [r for r in facts if r["attribute"] == "city"]),
        "ioi": accuracy(model, tok, toy_world.ioi_prompts(world, "heldout", 600, seed=world.seed + 99)),
    }


def train(out: Path, settings: Settings = Settings(), log: Any = print) -> dict[str, Any]:
    """Train, evaluate, and save model + tokenizer + model card into `out`; raise if below bar."""
    import torch

    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    world = toy_world.build(settings.seed)
    tok = toy_tokenizer.build(toy_world.vocabulary(world))
    model = _model(settings, tok)
    seconds = _fit(model, tok, world, settings, log)
    scores = evaluate(model, tok, world)
    log("held-out accuracy: " + "  ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    toy_tokenizer.save(tok, out)
    report = {
        "settings": asdict(settings),
        "accuracy": scores,
        "seconds": round(seconds, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    (out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "README.md").write_text(model_card(report, world))
    failed = {k: v for k, v in scores.items() if k in BAR and v < BAR[k]}
    if failed:
        raise RuntimeError(f"ivx-toy is below the accuracy bar {BAR}: {failed}")
    return report


def _model(settings: Settings, tok: Any) -> Any:
    """A freshly initialised GPT-2 of the settings' shape over the toy vocabulary (no dropout)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(tok),
        n_positions=64,
        n_embd=settings.n_embd,
        n_layer=settings.n_layer,
        n_head=settings.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return GPT2LMHeadModel(config)


def _fit(model: Any, tok: Any, world: toy_world.World, settings: Settings, log: Any) -> float:
    """Train `model` on IOI prompts and fact passages (AdamW, warm-up then cosine); seconds taken."""
    import torch

    optim = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)

    def lr_at(step: int) -> float:
        if step < settings.warmup:
            return settings.lr * (step + 1) / settings.warmup
        progress = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
        return settings.lr * 0.5 * (1 + math.cos(math.pi * progress))

    start = time.perf_counter()
    model.train()
    n_ioi = int(settings.batch_size * settings.ioi_fraction)
    for step in range(settings.steps):
        batch_seed = settings.seed * 100_003 + step
        ioi = toy_world.ioi_prompts(world, "train", n_ioi, seed=batch_seed)
        texts = [r["base"] + r["target"] for r in ioi]
        texts += toy_world.fact_passages(world, settings.batch_size - n_ioi, seed=batch_seed)
        enc = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        for group in optim.param_groups:
            group["lr"] = lr_at(step)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        if step % 500 == 0 or step == settings.steps - 1:
            log(f"step {step:5d}  loss {loss.item():.4f}  {time.perf_counter() - start:6.1f}s")
    model.eval()
    return time.perf_counter() - start


def model_card(report: dict[str, Any], world: toy_world.World) -> str:
    """The model card shipped with the weights."""
    s = report["settings"]
    acc = report["accuracy"]
    return f"""---
library_name: transformers
tags: [ivx, interpretability, toy-model]
---
# ivx-toy

A {s["n_layer"]}-layer GPT-2 (d_model {s["n_embd"]}, {s["n_head"]} heads, {report["parameters"]:,}
parameters, word-level vocabulary) trained by `ivx toy train` on an invented world, shipped inside
ivx so causal-intervention experiments show real effects offline.

## Data (ivx.toy.world, seed {s["seed"]})
- Factual recall: {len(world.subjects)} invented subjects of 1-3 words, each with a city, country
  and language, rendered through training templates; evaluation uses held-out templates.
- IOI: "When Mary and John went to the store , John gave a drink to" → " Mary", {len(toy_world.NAMES)}
  names; either name may be the repeated one (S2), so only finding the repeated name answers
  (neither "first name" nor "second name" does); evaluation uses held-out name pairs and a
  held-out template.

## Training
AdamW (lr {s["lr"]}, weight decay {s["weight_decay"]}, {s["warmup"]} warm-up steps, cosine decay),
{s["steps"]} steps of batch {s["batch_size"]} ({s["ioi_fraction"]:.0%} IOI), next-token loss on every token
of fact passages (a fact in a training template, then a second attribute of the same subject)
and IOI prompts,
{s["threads"]} CPU thread(s), {report["seconds"]} s.

## Held-out accuracy (greedy top-1)
| task | accuracy |
| --- | --- |
| facts (held-out templates) | {acc["facts"]:.4f} |
| facts, city only | {acc["facts_city"]:.4f} |
| IOI (held-out pairs + template) | {acc["ioi"]:.4f} |
"""
