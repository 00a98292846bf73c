"""The word-level tokenizer of ivx-toy, saved as a transformers fast tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SPECIAL = ("<|endoftext|>", "[UNK]")


def build(words: list[str]) -> Any:
    """A WordLevel fast tokenizer over `words` (whitespace-split, so offsets map to characters)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL)}
    for word in words:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=64,
    )


def save(tokenizer: Any, out: Path) -> None:
    """Save so that AutoTokenizer.from_pretrained(out) loads it offline."""
    tokenizer.save_pretrained(out)
