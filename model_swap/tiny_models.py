"""Tiny random-weight llama models that llama.cpp really loads and runs.

Each model is a 2-layer, 64-dim llama with a byte-fallback SentencePiece
vocabulary (``<unk> <s> </s>``, the 256 ``<0xNN>`` byte tokens and a few
words), about 0.5 MB by default. ``size_mb`` widens the feed-forward layers so
the file reaches roughly that size, for transfer tests. Output is gibberish,
but it is real llama.cpp generation. Rows of the output matrix are zero for
every token except printable ASCII bytes and the words, so those zero logits
never win: text is printable, and generation runs to ``max_tokens`` instead
of stopping early at ``</s>``.
"""

from __future__ import annotations

import hashlib
import os
import string
from pathlib import Path

import numpy as np

N_EMBD = 64
N_LAYERS = 2
N_HEAD = 4
CONTEXT_LENGTH = 2048
MIN_FF = 128
WORDS = ["▁hello", "▁world", "▁model", "▁swap", "▁cache", "▁token", "▁the", "▁a"]
# Above this many elements, tensors are tiled from a random block: it keeps a
# 1 GiB model quick to write, and the weights stay non-degenerate.
_TILE_ELEMENTS = 1 << 20


def _vocab() -> tuple[list[bytes], list[float], list[int]]:
    from gguf import TokenType

    tokens = [b"<unk>", b"<s>", b"</s>"]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    for byte in range(256):
        tokens.append(f"<0x{byte:02X}>".encode())
        types.append(TokenType.BYTE)
    for word in WORDS:
        tokens.append(word.encode())
        types.append(TokenType.NORMAL)
    scores = [0.0] * len(tokens)
    return tokens, scores, [int(t) for t in types]


def _printable_mask(tokens: list[bytes]) -> np.ndarray:
    """True for tokens worth sampling: printable ASCII byte tokens and the words."""
    keep = np.zeros(len(tokens), dtype=bool)
    for index, token in enumerate(tokens):
        if token.startswith(b"<0x") and len(token) == 6:
            keep[index] = 0x20 <= int(token[3:5], 16) <= 0x7E
        elif not token.startswith(b"<"):
            keep[index] = True
    return keep


def _n_ff_for(size_mb: float | None, n_vocab: int) -> int:
    if not size_mb:
        return MIN_FF
    fixed = 4 * (2 * n_vocab * N_EMBD + N_LAYERS * (4 * N_EMBD * N_EMBD + 2 * N_EMBD) + N_EMBD)
    per_ff = 4 * N_LAYERS * 3 * N_EMBD
    target = int(size_mb * 1024 * 1024)
    n_ff = max(MIN_FF, (target - fixed) // per_ff)
    return n_ff - n_ff % 32 or 32


def _weights(rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> np.ndarray:
    count = int(np.prod(shape))
    if count <= _TILE_ELEMENTS:
        block = rng.standard_normal(count, dtype=np.float32)
    else:
        block = np.resize(rng.standard_normal(_TILE_ELEMENTS, dtype=np.float32), count)
    block *= np.float32(scale)
    return block.reshape(shape)


def write_tiny_model(
    path: str | os.PathLike, *, size_mb: float | None = None, chat_template: str | None = None
) -> Path:
    """Write one tiny model to ``path`` (atomically) and return the path.

    The model's GGUF ``general.name`` is the file's stem, and its weights are
    seeded from the stem, so models with different names differ. ``chat_template``
    becomes its ``tokenizer.chat_template`` (none by default).
    """
    from gguf import GGUFWriter

    path = Path(path)
    name = path.stem
    tokens, scores, types = _vocab()
    n_vocab = len(tokens)
    n_ff = _n_ff_for(size_mb, n_vocab)
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    writer = GGUFWriter(tmp, "llama")
    try:
        writer.add_name(name)
        writer.add_context_length(CONTEXT_LENGTH)
        writer.add_embedding_length(N_EMBD)
        writer.add_block_count(N_LAYERS)
        writer.add_feed_forward_length(n_ff)
        writer.add_head_count(N_HEAD)
        writer.add_head_count_kv(N_HEAD)
        writer.add_rope_dimension_count(N_EMBD // N_HEAD)
        writer.add_layer_norm_rms_eps(1e-5)
        writer.add_file_type(0)  # all F32
        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_unk_token_id(0)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_add_bos_token(True)
        if chat_template is not None:
            writer.add_chat_template(chat_template)

        ones = np.ones(N_EMBD, dtype=np.float32)
        writer.add_tensor("token_embd.weight", _weights(rng, (n_vocab, N_EMBD), 1.0))
        writer.add_tensor("output_norm.weight", ones.copy())
        output = _weights(rng, (n_vocab, N_EMBD), 1.0)
        output[~_printable_mask(tokens), :] = 0.0
        writer.add_tensor("output.weight", output)
        attn_scale = N_EMBD**-0.5
        for layer in range(N_LAYERS):
            prefix = f"blk.{layer}"
            writer.add_tensor(f"{prefix}.attn_norm.weight", ones.copy())
            for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
                writer.add_tensor(
                    f"{prefix}.{part}.weight", _weights(rng, (N_EMBD, N_EMBD), attn_scale)
                )
            writer.add_tensor(f"{prefix}.ffn_norm.weight", ones.copy())
            writer.add_tensor(
                f"{prefix}.ffn_gate.weight", _weights(rng, (n_ff, N_EMBD), attn_scale)
            )
            writer.add_tensor(f"{prefix}.ffn_up.weight", _weights(rng, (n_ff, N_EMBD), attn_scale))
            writer.add_tensor(
                f"{prefix}.ffn_down.weight", _weights(rng, (N_EMBD, n_ff), n_ff**-0.5)
            )
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(tmp, path)
    return path


def tiny_model_names(count: int) -> list[str]:
    """``tiny-a.gguf``, ``tiny-b.gguf``, ... then ``tiny-aa.gguf`` past 26."""
    letters = string.ascii_lowercase
    names = []
    for index in range(count):
        label = ""
        n = index
        while True:
            label = letters[n % 26] + label
            n = n // 26 - 1
            if n < 0:
                break
        names.append(f"tiny-{label}.gguf")
    return names


def write_tiny_models(
    directory: str | os.PathLike, *, count: int = 3, size_mb: float | None = None
) -> list[Path]:
    """Write ``count`` distinct tiny models into ``directory`` and return their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return [write_tiny_model(directory / name, size_mb=size_mb) for name in tiny_model_names(count)]
