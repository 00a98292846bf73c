"""Offline tokenizers with the conventions of real model families, trained in-process in seconds.

- `gpt2`:   byte-level BPE ('Ġ' marks a leading space), no BOS added, GPT-2 model.
- `pythia`: byte-level BPE with trimmed offsets, no BOS added, GPT-NeoX model.
- `llama3`: byte-level BPE like GPT-2's, but BOS `<|begin_of_text|>` added (Llama-3), Llama model.
- `llama`:  SentencePiece-style BPE ('▁' metaspace, byte fallback, digits split), the current
            `tokenizer.json` layout (Metaspace pre-tokenizer), BOS `<s>` added, Llama model.
- `llama2`: the same vocabulary in the Llama-2 layout (normalizer prepends '▁' and replaces
            spaces, no pre-tokenizer): `' Paris'` tokenized alone gives `['▁', '▁Paris']`.
- `gemma`:  metaspace BPE without a dummy prefix (spaces replaced by '▁'), BOS `<bos>` added,
            Gemma model.

Each is saved next to a tiny random model of its architecture (tests/tiny.py) and loaded
through ivx's normal model-loading path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STYLES = ("gpt2", "pythia", "llama3", "llama", "llama2", "gemma")
BYTE_LEVEL = ("gpt2", "pythia", "llama3")
ARCH = {
    "gpt2": "gpt2",
    "pythia": "gpt_neox",
    "llama3": "llama",
    "llama": "llama",
    "llama2": "llama",
    "gemma": "gemma",
}

CORPUS = [
    "The Space Needle is in downtown Seattle.",
    "The Space Needle is located in the city of Seattle",
    "In 1889, the Eiffel Tower was built in Paris.",
    "In 1887, work on the Eiffel Tower began in Paris.",
    "Paris is the capital of France. Parisian cafes are small, and Paris is the capital of France.",
    "The Golden Gate Bridge is in San Francisco. The zoo is in San Diego.",
    "Tallahassee is the capital of Florida. Rome is the capital of Italy.",
    "When Mary and John went to the store, John gave a drink to Mary.",
    "The Colosseum is located in the city of Rome. Berlin is the capital of Germany.",
    "Big Ben is in London. The Louvre is in Paris. The Space Needle is in Seattle.",
]


def _trained(style: str) -> dict[str, Any]:
    """A BPE trained on CORPUS with the style's pre-tokenizer, as tokenizer.json data."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    if style in BYTE_LEVEL:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        special = ["<|begin_of_text|>", "<|end_of_text|>"] if style == "llama3" else ["<|endoftext|>"]
    else:
        meta = pre_tokenizers.Metaspace(
            replacement="▁", prepend_scheme="first" if style != "gemma" else "never"
        )
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), meta])
        alphabet = []
        special = []
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=special, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(CORPUS * 20, trainer=trainer)
    return json.loads(tok.to_str())


def _metaspace(data: dict[str, Any], style: str) -> dict[str, Any]:
    """Re-index a trained metaspace BPE as SentencePiece does: specials, 256 byte tokens, pieces."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"] if style == "gemma" else ["<unk>", "<s>", "</s>"]
    vocab = {t: i for i, t in enumerate(specials)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece in sorted(data["model"]["vocab"], key=data["model"]["vocab"].get):
        vocab.setdefault(piece, len(vocab))
    data["model"].update(vocab=vocab, byte_fallback=True, fuse_unk=True, unk_token="<unk>")
    data["added_tokens"] = [
        {
            "id": i,
            "content": t,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, t in enumerate(specials)
    ]
    bos = "<bos>" if style == "gemma" else "<s>"
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [
            {"SpecialToken": {"id": bos, "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
            {"Sequence": {"id": "B", "type_id": 1}},
        ],
        "special_tokens": {bos: {"id": bos, "ids": [vocab[bos]], "tokens": [bos]}},
    }
    data["decoder"] = {
        "type": "Sequence",
        "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
        ]
        + ([] if style == "gemma" else [{"type": "Strip", "content": " ", "start": 1, "stop": 0}]),
    }
    digits = {"type": "Digits", "individual_digits": True}
    if style == "llama2":  # the layout transformers 4.x's LlamaTokenizerFast writes
        data["normalizer"] = {
            "type": "Sequence",
            "normalizers": [
                {"type": "Prepend", "prepend": "▁"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
            ],
        }
        data["pre_tokenizer"] = None
    elif style == "gemma":
        data["normalizer"] = {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
        data["pre_tokenizer"] = {
            "type": "Sequence",
            "pretokenizers": [
                digits,
                {"type": "Split", "pattern": {"String": "▁"}, "behavior": "MergedWithNext", "invert": False},
            ],
        }
    return data


def build_tokenizer(style: str) -> Any:
    """A transformers fast tokenizer with the conventions of `style` (see the module docstring)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    data = _trained(style)
    if style in BYTE_LEVEL:
        data["decoder"] = {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": True,
            "use_regex": True,
        }
        data["post_processor"] = {**data["decoder"], "trim_offsets": style == "pythia"}
        first, end = ("<|endoftext|>",) * 2
        if style == "llama3":  # Llama-3's tokenizer.json: byte-level offsets, then BOS by a template
            first, end = "<|begin_of_text|>", "<|end_of_text|>"
            bos = {"id": first, "ids": [0], "tokens": [first]}
            head = [{"SpecialToken": {"id": first, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]
            template = {
                "type": "TemplateProcessing",
                "single": head,
                "pair": head + [{"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {first: bos},
            }
            data["post_processor"] = {"type": "Sequence", "processors": [data["post_processor"], template]}
        tok = Tokenizer.from_str(json.dumps(data))
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=first, eos_token=end, unk_token=end)
    tok = Tokenizer.from_str(json.dumps(_metaspace(data, style)))
    names = ("<bos>", "<eos>", "<pad>") if style == "gemma" else ("<s>", "</s>", None)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=names[0], eos_token=names[1], pad_token=names[2], unk_token="<unk>"
    )


def build(style: str, out_dir: Path, seed: int = 0) -> Path:
    """Save the `style` tokenizer with a tiny random model of its architecture into out_dir."""
    import torch
    from transformers import AutoModelForCausalLM

    from tests.tiny import config

    tok = build_tokenizer(style)
    cfg = config(ARCH[style], 2, 32, 4, len(tok))
    for name in ("bos", "eos", "pad"):
        token_id = getattr(tok, f"{name}_token_id")
        setattr(cfg, f"{name}_token_id", token_id if token_id is not None else tok.eos_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.eval()
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return Path(out_dir)
