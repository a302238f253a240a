"""Embeddings computed on a resident model's weights, in a second llama.cpp context.

A resident model's generation context is created without embeddings; this
module creates, lazily on the first embedding request, a second context on the
same loaded weights (``llama_init_from_model`` with ``embeddings=True``), so an
embedding request never reloads a model and does not depend on how
generations are scheduled. Pooling is what the GGUF's metadata names
(``<arch>.pooling_type``: mean, cls or last); mean when it names none (or
"none"); rerankers (rank) are refused. Every vector is L2-normalized to unit
length, as OpenAI's embeddings are.

Inputs of one request are packed into as few llama.cpp batches as fit (one
sequence per input) and decoded together. Each model's embedding context is
used by one request at a time; ``release`` (called by the engine before it
closes a model) waits for a running request and frees the context. Nothing
here does HTTP.
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass

import llama_cpp
import numpy as np
from llama_cpp import _internals

from inference_worker import llama_log

logger = logging.getLogger(__name__)

POOLING_NAMES = {
    llama_cpp.LLAMA_POOLING_TYPE_MEAN: "mean",
    llama_cpp.LLAMA_POOLING_TYPE_CLS: "cls",
    llama_cpp.LLAMA_POOLING_TYPE_LAST: "last",
}


class EmbeddingError(Exception):
    """The request cannot be embedded on this model (the message says why): a 400."""


class ModelClosed(Exception):
    """The model was unloaded before (or while) the request waited for it."""


@dataclass(frozen=True)
class Embedded:
    """One request's vectors (unit length), their size and the tokens each input took."""

    vectors: list[np.ndarray]
    dimensions: int
    token_counts: list[int]
    pooling: str


def pooling_of(metadata: dict) -> int:
    """The pooling llama.cpp should use for a model with this GGUF metadata."""
    arch = metadata.get("general.architecture", "")
    raw = metadata.get(f"{arch}.pooling_type")
    try:
        value = int(raw) if raw is not None else None
    except ValueError:
        value = None
    if value == llama_cpp.LLAMA_POOLING_TYPE_RANK:
        raise EmbeddingError("the model is a reranker (pooling: rank); it has no embeddings")
    return value if value in POOLING_NAMES else llama_cpp.LLAMA_POOLING_TYPE_MEAN


class _Context:
    """One model's embedding context; ``lock`` is held while it is used or freed."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ctx: _internals.LlamaContext | None = None
        self.batch: _internals.LlamaBatch | None = None
        self.pooling = llama_cpp.LLAMA_POOLING_TYPE_MEAN
        self.n_seq_max = 1
        self.bytes = 0  # the buffers llama.cpp allocated for it
        self.closed = False


class Embeddings:
    """Embedding contexts of the resident models, keyed by their ``Llama`` object.
    Thread-safe."""

    def __init__(self, max_tokens: int, setting: str = "EMBEDDING_TOKENS"):
        # Tokens of one input and of one llama.cpp batch: the context's size, its batch and
        # micro-batch (pooling reads a whole sequence from one micro-batch).
        self.max_tokens = max_tokens
        self.setting = setting  # the setting that bounds it, for error messages
        self._lock = threading.Lock()
        # A model's Llama object is new on every load: a reload never reuses a closed context.
        self._contexts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def context_bytes(self, llm) -> int:
        """The memory llama.cpp allocated for ``llm``'s embedding context (0: none yet)."""
        with self._lock:
            slot = self._contexts.get(llm)
        return slot.bytes if slot is not None else 0

    def embed(
        self, llm, texts: list[str | list[int]], *, dimensions: int | None = None
    ) -> Embedded:
        """Embed ``texts`` on ``llm`` (blocks while another request embeds on it).

        Raises EmbeddingError (an input longer than the context, ``dimensions``
        other than the model's, a reranker) or ModelClosed.
        """
        with self._lock:
            slot = self._contexts.get(llm)
            if slot is None:
                slot = self._contexts[llm] = _Context()
        # Everything that touches ``llm`` runs under the slot's lock: ``release`` takes
        # it before the model is closed, so a closed model is never read.
        with slot.lock:
            if slot.closed:
                raise ModelClosed("the model was unloaded")
            size = llm.n_embd()
            if dimensions is not None and dimensions != size:
                raise EmbeddingError(
                    f"dimensions {dimensions} is not supported: this model's embeddings have "
                    f"{size} dimensions (leave dimensions out or give {size})"
                )
            tokens = [
                list(text)
                if isinstance(text, list)
                else llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
                for text in texts
            ]
            n_vocab = llm.n_vocab()
            for index, ids in enumerate(tokens):
                bad = next((t for t in ids if not 0 <= t < n_vocab), None)
                if bad is not None:
                    raise EmbeddingError(
                        f"input {index}: token {bad} is not in this model's vocabulary "
                        f"(ids 0 to {n_vocab - 1})"
                    )
            for index, ids in enumerate(tokens):
                if len(ids) > self.max_tokens:
                    raise EmbeddingError(
                        f"input {index} is {len(ids)} tokens; an embedding input may hold "
                        f"at most {self.max_tokens} ({self.setting})"
                    )
            if slot.ctx is None and tokens:
                self._create(slot, llm)
            vectors = _run(slot, tokens, size, self.max_tokens) if tokens else []
            pooling = POOLING_NAMES[slot.pooling]
        return Embedded(vectors, size, [len(ids) for ids in tokens], pooling)

    def _create(self, slot: _Context, llm) -> None:
        """The embedding context on ``llm``'s weights (the caller holds ``slot.lock``)."""
        pooling = pooling_of(llm.metadata)
        params = llama_cpp.llama_context_default_params()
        # Each input must fit one micro-batch: pooling reads a whole sequence at once. The
        # memory is cleared after every batch, so the KV cache needs no more room either.
        params.n_ctx = params.n_batch = params.n_ubatch = self.max_tokens
        params.n_seq_max = max(1, min(llama_cpp.llama_max_parallel_sequences(), self.max_tokens))
        params.kv_unified = True
        params.embeddings = True
        params.pooling_type = pooling
        params.n_threads = llm.context_params.n_threads
        params.n_threads_batch = llm.context_params.n_threads_batch
        with llama_log.collect() as log:
            try:
                slot.ctx = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
            except ValueError as err:
                why = "; ".join(log.errors) or str(err)
                raise EmbeddingError(
                    f"llama.cpp could not create an embedding context: {why}"
                ) from None
        slot.batch = _internals.LlamaBatch(
            n_tokens=self.max_tokens, embd=0, n_seq_max=params.n_seq_max, verbose=False
        )
        slot.pooling, slot.n_seq_max, slot.bytes = pooling, params.n_seq_max, log.buffer_bytes
        logger.info(
            "embedding context created (pooling %s, %d tokens, %.1f MiB)",
            POOLING_NAMES[pooling],
            self.max_tokens,
            log.buffer_bytes / llama_log.MIB,
        )

    def release(self, llm) -> None:
        """Free ``llm``'s embedding context, after a request running on it; later
        requests on ``llm`` raise ModelClosed. Call before closing ``llm``."""
        with self._lock:
            slot = self._contexts.get(llm)
            if slot is None:
                slot = self._contexts[llm] = _Context()
        with slot.lock:
            slot.closed = True
            if slot.ctx is not None:
                slot.batch.close()
                slot.ctx.close()
                slot.ctx, slot.batch, slot.bytes = None, None, 0


def _run(slot: _Context, tokens: list[list[int]], size: int, limit: int) -> list[np.ndarray]:
    """Decode ``tokens`` (one sequence per input) in as few batches of at most ``limit``
    tokens as fit; unit vectors."""
    vectors: list[np.ndarray] = []
    pending: list[list[int]] = []
    used = 0
    for ids in tokens:
        if pending and (used + len(ids) > limit or len(pending) >= slot.n_seq_max):
            vectors.extend(_decode(slot, pending, size))
            pending, used = [], 0
        pending.append(ids)
        used += len(ids)
    vectors.extend(_decode(slot, pending, size))
    return vectors


def _decode(slot: _Context, sequences: list[list[int]], size: int) -> list[np.ndarray]:
    slot.batch.reset()
    for seq_id, ids in enumerate(sequences):
        slot.batch.add_sequence(ids, seq_id, True)  # every token is an output: pooling reads all
    slot.ctx.kv_cache_clear()
    try:
        slot.ctx.decode(slot.batch)
        vectors = []
        for seq_id in range(len(sequences)):
            pointer = llama_cpp.llama_get_embeddings_seq(slot.ctx.ctx, seq_id)
            if not pointer:
                raise EmbeddingError("llama.cpp returned no embedding for this model")
            vector = np.ctypeslib.as_array(pointer, shape=(size,)).astype(np.float32)
            norm = float(np.linalg.norm(vector))
            vectors.append(vector / norm if norm > 0 else vector)
        return vectors
    finally:
        slot.ctx.kv_cache_clear()
        slot.batch.reset()
