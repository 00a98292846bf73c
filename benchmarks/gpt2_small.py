"""The benchmarks' model: GPT-2 small's shape (12 layers, d_model 768, vocab 50257), random weights;
and what the patching benchmarks share: ivx-toy's tokenizer, the clean / corrupted prompts."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from ivx.model.loading import BUNDLED
from ivx.store import fingerprint


def copy_tokenizer(out: Path) -> None:
    """ivx-toy's word-level tokenizer files into the model directory `out`."""
    for name in BUNDLED["ivx-toy"].iterdir():
        if name.name.startswith(("tokenizer", "special_tokens", "vocab")):
            shutil.copy(name, out / name.name)


def prompts(length: int) -> tuple[str, str]:
    """(clean, corrupted) texts of `length` word-level tokens; the first 3 differ."""
    words = "the city of Trelin is located near the old tower and the bridge by a river".split()
    clean = [words[i % len(words)] for i in range(length)]
    corrupted = ["Alice", "Bob", "Carl"] + clean[3:]
    return " ".join(clean), " ".join(corrupted)


def build_model(out: Path) -> Path:
    """Save the model with ivx-toy's word-level tokenizer into `out` (offline, a few seconds)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=12,
        n_embd=768,
        n_head=12,
        vocab_size=50257,
        n_positions=1024,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    GPT2LMHeadModel(config).save_pretrained(out)
    copy_tokenizer(out)
    return out


def store_digests(model_dir: Path) -> float:
    """Hash the model's files into ivx's digest store (every manifest records them), as any run
    after a model's first finds them; return the seconds this first hashing took."""
    start = time.perf_counter()
    for f in sorted(model_dir.iterdir()):
        if f.is_file():
            fingerprint.sha256_file(f)
    return time.perf_counter() - start
