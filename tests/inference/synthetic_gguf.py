"""Tiny llama-architecture GGUF models with random weights, written with gguf's writer.

A target and a draft model that share a vocabulary (or, on purpose, do not), for the
draft-model path of speculative decoding: small enough to load in milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFWriter, TokenType

WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "and", "then", "def", "return"]


def vocabulary(variant: str = "") -> list[str]:
    """An SPM vocabulary: specials, the 256 byte tokens, then words (``variant``, when
    given, replaces the last word, so two vocabularies differ in one token)."""
    words = [f"\u2581{w}" for w in WORDS]
    if variant:
        words[-1] = f"\u2581{variant}"
    return ["<unk>", "<s>", "</s>", *[f"<0x{b:02X}>" for b in range(256)], *words]


def write_model(
    path: Path,
    *,
    seed: int,
    layers: int = 2,
    n_embd: int = 64,
    n_ff: int = 128,
    heads: int = 4,
    tokens: list[str] | None = None,
    extra_tokens: int = 0,
) -> Path:
    """A llama model at ``path`` with weights drawn from ``seed``; ``extra_tokens``
    appends more words (another vocabulary size)."""
    tokens = list(tokens or vocabulary())
    tokens += [f"\u2581extra{i}" for i in range(extra_tokens)]
    n_vocab = len(tokens)
    rng = np.random.default_rng(seed)
    writer = GGUFWriter(str(path), "llama")
    writer.add_name(path.stem)
    writer.add_context_length(512)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(n_embd // heads)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(0)  # all F32
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * 3 + [0.0] * 256 + [-float(i) for i in range(n_vocab - 259)])
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    types += [TokenType.BYTE] * 256 + [TokenType.NORMAL] * (n_vocab - 259)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)

    def weight(*shape: int) -> np.ndarray:
        # Large enough that the logits are far apart: greedy choices without near ties.
        return (rng.standard_normal(shape) / np.sqrt(shape[-1]) * 4.0).astype(np.float32)

    writer.add_tensor("token_embd.weight", weight(n_vocab, n_embd))
    for i in range(layers):
        blk = f"blk.{i}"
        writer.add_tensor(f"{blk}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"{blk}.{name}.weight", weight(n_embd, n_embd))
        writer.add_tensor(f"{blk}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(f"{blk}.ffn_gate.weight", weight(n_ff, n_embd))
        writer.add_tensor(f"{blk}.ffn_up.weight", weight(n_ff, n_embd))
        writer.add_tensor(f"{blk}.ffn_down.weight", weight(n_embd, n_ff))
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    writer.add_tensor("output.weight", weight(n_vocab, n_embd))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
