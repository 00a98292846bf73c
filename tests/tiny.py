"""Tiny random-init models of several architectures, saved like real checkpoints (offline)."""

from __future__ import annotations

from pathlib import Path

ARCHS = ("gpt2", "gpt_neox", "llama", "qwen2", "opt", "gemma", "mistral", "phi3", "gptj", "olmo")
WORDS = (
    "The Space Needle is in downtown Seattle located city of When Mary and John went to the store "
    "gave a drink Tom James park ball Eiffel Tower Paris In old records Zorvan Trelin was built by "
    "people who live there speak language country capital famous known for its a an at on it he she "
    "they we you I this that with from as by for not but or be have do say get make go know take see "
    "come think look want give use find tell ask work seem feel try leave call good new first last "
    "long great little own other right big high different small large next early young important few "
    "public bad same able , . : ; ! ? ' \""
).split()


def tokenizer():  # type: ignore[no-untyped-def]
    """A word-level fast tokenizer with offsets (the same builder as ivx-toy's)."""
    from ivx.toy.tokenizer import build as build_tokenizer

    return build_tokenizer(list(WORDS))


def config(arch: str, n_layers: int, d_model: int, n_heads: int, vocab: int):  # type: ignore[no-untyped-def]
    """A transformers config of this architecture with dropout off and GQA where supported."""
    import transformers as tf

    common = {"vocab_size": vocab, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}
    llama_like = dict(
        hidden_size=d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=max(1, n_heads // 2),
        intermediate_size=2 * d_model,
        max_position_embeddings=128,
        **common,
    )
    if arch == "gpt2":
        return tf.GPT2Config(
            n_layer=n_layers,
            n_embd=d_model,
            n_head=n_heads,
            n_positions=128,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **common,
        )
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(
            hidden_size=d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            intermediate_size=4 * d_model,
            max_position_embeddings=128,
            use_parallel_residual=True,
            rotary_pct=0.5,
            **common,
        )
    if arch == "gptj":
        return tf.GPTJConfig(
            n_embd=d_model,
            n_layer=n_layers,
            n_head=n_heads,
            n_positions=128,
            rotary_dim=d_model // n_heads // 2,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **common,
        )
    if arch == "opt":
        return tf.OPTConfig(
            hidden_size=d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            ffn_dim=4 * d_model,
            word_embed_proj_dim=d_model,
            max_position_embeddings=128,
            dropout=0.0,
            attention_dropout=0.0,
            **common,
        )
    if arch == "llama":
        return tf.LlamaConfig(**llama_like)
    if arch == "mistral":
        return tf.MistralConfig(**llama_like)
    if arch == "qwen2":
        return tf.Qwen2Config(**llama_like)
    if arch == "gemma":
        return tf.GemmaConfig(head_dim=d_model // n_heads, **llama_like)
    if arch == "phi3":
        return tf.Phi3Config(**llama_like)
    if arch == "olmo":
        return tf.OlmoConfig(**llama_like)
    raise ValueError(arch)


def build(
    arch: str, out_dir: Path, *, n_layers: int = 2, d_model: int = 32, n_heads: int = 4, seed: int = 0
) -> Path:
    """Save a random-init model of `arch` plus the word-level tokenizer into out_dir."""
    import torch
    from transformers import AutoModelForCausalLM

    out_dir = Path(out_dir)
    tok = tokenizer()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config(arch, n_layers, d_model, n_heads, len(tok)))
    model.eval()
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir
