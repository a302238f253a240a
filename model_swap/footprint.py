"""How much memory llama.cpp will take for a GGUF model, estimated from the file's metadata.

Shared by the worker (it reports the estimate of each resident model) and the
store (it decides what fits before it loads); it never imports llama_cpp, and
it caches nothing (the caller does). Only the GGUF header is read: the
metadata keys are walked with the ``gguf`` package's constants, and arrays are
skipped, not decoded (``gguf.GGUFReader`` decodes every token of a 262k-token
vocabulary and took 8 s on Gemma 3 270M; this takes a fraction of a second).

The estimate reproduces how llama.cpp (the build this project uses, on CPU,
flash attention off as the worker runs it) sizes a context of ``n_seq``
sequences of ``n_ctx`` tokens, each in its own KV stream (the worker's
PARALLEL). All sizes in bytes; ``ctx`` is ``n_seq * n_ctx`` rounded up to a
multiple of 256 (llama.cpp pads it), ``ctx_seq = ctx / n_seq`` what one token
attends over, ``ub`` the micro-batch ``min(n_ubatch, n_seq * n_ctx)`` (the
batch is capped at the context), ``f`` = 4 bytes per f32:

- ``weights = file size`` (mapped; repacked tensors make llama.cpp's own
  figure a few percent larger for quantized files).
- ``kv = 2 (f16) * ctx * sum over layers of head_count_kv * (key_length + value_length)``,
  with ``key_length``/``value_length`` defaulting to ``embedding_length / head_count``.
  Sliding-window layers get a full-size cache too (llama.cpp's "full-size SWA cache").
- ``output = n_vocab * f * n_seq`` (one row of logits per sequence).
- ``compute``: the graph allocator reuses memory, so the buffer is the largest
  set of tensors alive at once, the biggest of three moments:

  - attention: ``head_count * ctx_seq * ub * f`` (the KQ scores) + masks,
  - feed-forward: ``3 * feed_forward_length * ub * f`` (gate, up, their product) + masks,
  - logits: ``n_vocab * ub * f`` (the masks are gone by then),

  where masks = ``ctx_seq * ub * f`` per attention mask (two for a model with a
  sliding window: one per kind of layer), plus the activations alive beside
  them: ``7 * embedding_length * ub * f`` in the layers, ``2 * embedding_length * ub * f``
  at the logits (both calibrated against llama.cpp's log).

``Footprint.compute_bytes`` is ``output + compute``. For Gemma 3 270M Q4_K_M at
n_ctx 2048 this gives 241.4 (weights) + 36 (KV) + 515.5 (output and compute) =
792.9 MiB, against the 799.3 MiB llama.cpp logs (-0.8%); tiny test models are
within 2% from n_ctx 64 to 8192.
llama.cpp reserves the compute buffer but touches only what a batch uses, so
the process's RSS grows by less (about 330 MiB for Gemma).
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from gguf import GGUF_MAGIC, GGUFValueType, Keys

CTX_PAD = 256
F16, F32 = 2, 4

# struct formats of the scalar GGUF value types.
_SCALARS = {
    GGUFValueType.UINT8: "B",
    GGUFValueType.INT8: "b",
    GGUFValueType.UINT16: "H",
    GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I",
    GGUFValueType.INT32: "i",
    GGUFValueType.FLOAT32: "f",
    GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q",
    GGUFValueType.INT64: "q",
    GGUFValueType.FLOAT64: "d",
}
# Numeric arrays up to this length are decoded (per-layer values); longer ones
# (token scores) only report their length.
_DECODE_ARRAY_MAX = 4096


class FootprintError(ValueError):
    """The file is not a GGUF file this module can read; the message says why."""


@dataclass(frozen=True)
class Footprint:
    """Estimated bytes of one loaded model: weights, KV cache, compute (with output), their sum."""

    weights_bytes: int
    kv_bytes: int
    compute_bytes: int
    total_bytes: int


@dataclass(frozen=True)
class _Array:
    length: int
    values: tuple | None  # None for string arrays and long arrays


class _Header:
    """A cursor over the GGUF header in a memory map (little or big endian)."""

    def __init__(self, buffer, order: str):
        self._buffer = buffer
        self._order = order
        self.offset = 0

    def read(self, fmt: str):
        try:
            values = struct.unpack_from(self._order + fmt, self._buffer, self.offset)
        except struct.error:
            raise FootprintError("the GGUF header is truncated") from None
        self.offset += struct.calcsize(self._order + fmt)
        return values[0] if len(values) == 1 else values

    def string(self) -> str:
        length = self.read("Q")
        raw = self._buffer[self.offset : self.offset + length]
        if len(raw) != length:
            raise FootprintError("the GGUF header is truncated")
        self.offset += length
        return raw.decode("utf-8", errors="replace")

    def value(self, kind: int):
        if kind == GGUFValueType.STRING:
            return self.string()
        if kind in _SCALARS:
            return self.read(_SCALARS[kind])
        if kind == GGUFValueType.ARRAY:
            return self.array()
        raise FootprintError(f"unknown GGUF value type {kind}")

    def array(self) -> _Array:
        kind, length = self.read("IQ")
        if kind in _SCALARS:
            fmt = _SCALARS[kind]
            if length <= _DECODE_ARRAY_MAX:
                values = self.read(f"{length}{fmt}") if length else ()
                return _Array(length, values if isinstance(values, tuple) else (values,))
            self.offset += length * struct.calcsize(self._order + fmt)
            return _Array(length, None)
        if kind == GGUFValueType.STRING:
            for _ in range(length):  # each string carries its own length: walk them
                self.offset += 8 + self.read("Q")
            return _Array(length, None)
        for _ in range(length):  # arrays of arrays: rare, walked element by element
            self.value(kind)
        return _Array(length, None)


def read_metadata(path: str | os.PathLike) -> dict[str, object]:
    """The GGUF metadata of ``path``: scalars and strings as values, arrays as ``_Array``.

    Reads only the header (through a memory map). Raises FootprintError when the
    file is not GGUF (version 2 or 3) or its header is cut short.
    """
    return _read_header(path, count_parameters=False)[0]


def read_header(path: str | os.PathLike) -> tuple[dict[str, object], int]:
    """``read_metadata`` and the model's parameter count (the tensors' elements, summed
    from the tensor infos that follow the metadata)."""
    return _read_header(path, count_parameters=True)


def _read_header(path: str | os.PathLike, *, count_parameters: bool) -> tuple[dict, int]:
    with open(path, "rb") as f:
        try:
            buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            raise FootprintError(f"{Path(path).name} is empty") from None
    with buffer:
        if len(buffer) < 24 or struct.unpack_from("<I", buffer, 0)[0] != GGUF_MAGIC:
            raise FootprintError(f"{Path(path).name} is not a GGUF file")
        version = struct.unpack_from("<I", buffer, 4)[0]
        order = "<" if version & 0xFFFF else ">"  # a zero low half: written big-endian
        header = _Header(buffer, order)
        header.offset = 4
        version, tensors, count = header.read("IQQ")
        if version not in (2, 3):
            raise FootprintError(f"GGUF version {version} is not supported")
        metadata: dict[str, object] = {}
        for _ in range(count):
            key = header.string()
            metadata[key] = header.value(header.read("I"))
        parameters = 0
        for _ in range(tensors if count_parameters else 0):
            header.string()  # the tensor's name
            n_dims = header.read("I")
            dims = header.read(f"{n_dims}Q") if n_dims else 1
            elements = 1
            for dim in dims if isinstance(dims, tuple) else (dims,):
                elements *= dim
            parameters += elements
            header.read("IQ")  # its type and offset
        return metadata, parameters


def _per_layer(value: object, n_layers: int) -> list[int]:
    """A per-layer setting: one number for every layer, or an array with one per layer."""
    if isinstance(value, _Array):
        values = list(value.values or ())
        return (values + [0] * n_layers)[:n_layers]
    return [int(value)] * n_layers


def _vocab_size(metadata: dict[str, object], arch: str) -> int:
    tokens = metadata.get(Keys.Tokenizer.LIST)
    if isinstance(tokens, _Array):
        return tokens.length
    return int(metadata.get(Keys.LLM.VOCAB_SIZE.format(arch=arch), 0))


def estimate(
    path: str | os.PathLike, n_ctx: int, *, n_seq: int = 1, n_ubatch: int = 512
) -> Footprint:
    """Bytes llama.cpp will allocate to load ``path`` with ``n_seq`` sequences of ``n_ctx``
    tokens each (CPU; a separate KV stream per sequence, as the worker's PARALLEL runs it).

    Reads the header only; pure (no cache, no logging). Raises FootprintError
    when the file cannot be read as GGUF. Metadata the formula needs but the
    file lacks counts as zero (for example no attention for a model without heads).
    """
    if n_ctx < 1 or n_ubatch < 1 or n_seq < 1:
        raise ValueError("n_ctx, n_seq and n_ubatch must be positive")
    weights = os.path.getsize(path)
    metadata = read_metadata(path)
    arch = str(metadata.get(Keys.General.ARCHITECTURE, ""))

    def number(key: str, default: int = 0) -> int:
        value = metadata.get(key.format(arch=arch), default)
        if isinstance(value, _Array):  # per-layer: the largest layer decides
            return max(value.values or (default,))
        return int(value)

    n_layers = number(Keys.LLM.BLOCK_COUNT)
    n_embd = number(Keys.LLM.EMBEDDING_LENGTH)
    n_head = number(Keys.Attention.HEAD_COUNT)
    n_ff = number(Keys.LLM.FEED_FORWARD_LENGTH)
    n_vocab = _vocab_size(metadata, arch)
    head_dim = n_embd // n_head if n_head else 0
    key_length = number(Keys.Attention.KEY_LENGTH, head_dim)
    value_length = number(Keys.Attention.VALUE_LENGTH, head_dim)
    head_count_kv = metadata.get(Keys.Attention.HEAD_COUNT_KV.format(arch=arch), n_head)
    kv_heads = _per_layer(head_count_kv, n_layers)
    sliding = number(Keys.Attention.SLIDING_WINDOW) > 0

    ctx = -(-n_ctx * n_seq // CTX_PAD) * CTX_PAD  # all sequences' cells
    ctx_seq = ctx // n_seq  # one stream's: what one token attends over
    ub = min(n_ubatch, n_ctx * n_seq)
    kv = F16 * ctx * sum(heads * (key_length + value_length) for heads in kv_heads)
    output = n_vocab * F32 * n_seq
    masks = (2 if sliding else 1) * ctx_seq * ub * F32 if n_head else 0
    in_layers = masks + 7 * n_embd * ub * F32
    compute = max(
        n_head * ctx_seq * ub * F32 + in_layers,
        3 * n_ff * ub * F32 + in_layers,
        n_vocab * ub * F32 + 2 * n_embd * ub * F32,
    )
    return Footprint(weights, kv, output + compute, weights + kv + output + compute)
