"""Prefix reuse: the KV cells each slot of a batch scheduler keeps, and which free
slot's cells a new prompt starts from.

``KeptCells`` belongs to the loop thread of ``inference_worker/batch.py``: per slot,
the token ids whose KV cells the slot's stream holds, in position order, and the
llama.cpp calls that move, trim and drop them. ``best_prefix`` is the pure choice.

With a host-memory prompt cache (``inference_worker/kv_cache.py``) a slot about to
lose cells worth keeping copies them there first, and a prompt that a kept state
serves better than any slot restores it. Those copies read and write a stream's
buffer at once, while ``llama_memory_seq_cp`` between streams is only queued until
the next ``llama_decode``: a slot with a queued copy (``pending``) waits for that
decode before its state is read or written.
"""

from __future__ import annotations

import logging

import llama_cpp

from inference_worker.kv_cache import PromptCache, common_prefix, should_restore, worth_keeping
from inference_worker.kv_state import read_state, write_state

__all__ = ["KeptCells", "best_prefix", "common_prefix", "kv_streams"]

logger = logging.getLogger(__name__)


class KeptCells:
    """The token ids each slot's KV stream holds; the last stream may be a spare one."""

    def __init__(self, ctx, parallel: int, streams: int, cache: PromptCache | None = None):
        self._ctx = ctx
        self._memory = llama_cpp.llama_get_memory(ctx)
        self.spare = streams - 1 if streams > parallel else None
        self.tokens: list[list[int]] = [[] for _ in range(parallel)]
        self.cache = cache
        self.pending: set[int] = set()  # streams with a copy queued until the next decode
        self.load = None  # reads a disk-only entry's bytes (inference_worker/kv_disk.py)
        self.copied = 0  # prompts started from a running sequence's cells

    def place(
        self, slot: int, free: list[int], prompt: list[int], reuse: bool, running=()
    ) -> tuple[int, int, int] | None:
        """Prepare ``slot`` for ``prompt``: the kept cells sharing its longest prefix (from
        ``slot``, swapped in from one of the ``free`` slots, restored from the prompt cache,
        or copied from one of the ``running`` slots), trimmed to that prefix. Returns the
        prompt tokens it holds, the swaps made (0 or 1) and the tokens restored from the
        cache; None when it must wait for the next decode (a state copy into or out of a
        slot with a queued stream copy)."""
        if not reuse:
            return self.trim(slot, 0), 0, 0
        best, common = best_prefix(self.tokens, free, slot, prompt)
        cache = self.cache
        entry, kept = cache.best(prompt) if cache is not None else (None, 0)
        if running and self.spare is not None:
            src, shared = best_prefix(self.tokens, list(running[1:]), running[0], prompt)
            # A copy between streams moves a whole stream (n_ctx cells), whatever it holds.
            stream = llama_cpp.llama_n_ctx_seq(self._ctx)
            if shared > kept and should_restore(shared, common, stream):
                return self._copy(slot, src, shared)
        if entry is not None and should_restore(kept, common, len(entry.tokens)):
            if slot in self.pending:
                return None
            restored = self._restore(slot, entry, kept)
            if restored:
                return restored, 0, restored
            best, common = slot, 0  # the slot was emptied: evaluate the prompt
        if best != slot:
            self.swap(slot, best)
        if cache is not None and worth_keeping(len(self.tokens[slot]) - common):
            if slot in self.pending:
                return None
            self.keep(slot)
        return self.trim(slot, common), int(best != slot), 0

    def _copy(self, slot: int, src: int, shared: int) -> tuple[int, int, int] | None:
        """Start ``slot`` from the first ``shared`` cells of the running sequence in ``src``
        (its whole stream is copied at the next decode, before this step writes to it)."""
        if self.cache is not None and worth_keeping(len(self.tokens[slot])):
            if slot in self.pending:
                return None
            self.keep(slot)
        llama_cpp.llama_memory_seq_cp(self._memory, src, slot, -1, -1)
        self.pending.add(slot)
        self.tokens[slot] = list(self.tokens[src])  # what the copy holds, trimmed below
        self.copied += 1
        return self.trim(slot, shared), 0, 0

    def keep(self, slot: int) -> None:
        """Copy ``slot``'s cells into the prompt cache (its state must not be pending)."""
        data = read_state(self._ctx, slot)
        if data is not None:
            self.cache.keep(tuple(self.tokens[slot]), data)

    def _restore(self, slot: int, entry, common: int) -> int:
        """Replace ``slot``'s cells with ``entry``'s state trimmed to ``common`` tokens; the
        tokens it holds then (0: the restore failed, the slot is empty)."""
        if worth_keeping(len(self.tokens[slot])):
            self.keep(slot)
        data = entry.data
        if data is None and self.load is not None:
            data = self.load(entry)  # None: unreadable (logged and deleted by the loader)
        if data is None or not write_state(self._ctx, slot, data):
            if data is not None:
                logger.warning("could not restore a kept prompt of %d tokens", len(entry.tokens))
            self.cache.discard(entry)
            self.drop(slot)
            return 0
        self.tokens[slot] = list(entry.tokens)
        kept = self.trim(slot, common)
        self.cache.used(entry, kept)
        return kept

    def swap(self, a: int, b: int) -> None:
        """Exchange the KV streams and tokens of slots ``a`` and ``b``.

        llama.cpp copies the streams at the start of the next llama_decode, in the order
        asked, before anything is written; without a spare stream ``b`` just moves to
        ``a`` and ``a``'s cells are lost.
        """
        memory, spare = self._memory, self.spare
        self.pending.update((a, b))
        if self.tokens[a] and spare is not None:
            llama_cpp.llama_memory_seq_cp(memory, a, spare, -1, -1)
            llama_cpp.llama_memory_seq_cp(memory, b, a, -1, -1)
            llama_cpp.llama_memory_seq_cp(memory, spare, b, -1, -1)
            llama_cpp.llama_memory_seq_rm(memory, spare, -1, -1)
        else:
            llama_cpp.llama_memory_seq_cp(memory, b, a, -1, -1)
            llama_cpp.llama_memory_seq_rm(memory, b, -1, -1)
            self.tokens[a] = []
        self.tokens[a], self.tokens[b] = self.tokens[b], self.tokens[a]

    def trim(self, slot: int, keep: int) -> int:
        """Keep the first ``keep`` cells of ``slot``; returns how many it keeps (0 where
        llama.cpp cannot drop a tail, as for a recurrent model's memory)."""
        tokens = self.tokens[slot]
        if len(tokens) <= keep:
            return len(tokens)
        if not llama_cpp.llama_memory_seq_rm(self._memory, slot, keep, -1):
            llama_cpp.llama_memory_seq_rm(self._memory, slot, -1, -1)
            keep = 0
        del tokens[keep:]
        return keep

    def drop(self, slot: int) -> None:
        """Remove every cell of ``slot``."""
        llama_cpp.llama_memory_seq_rm(self._memory, slot, -1, -1)
        self.tokens[slot] = []


def best_prefix(
    cached: list[list[int]], free: list[int], lowest: int, prompt: list[int]
) -> tuple[int, int]:
    """The free slot (``lowest`` or one of ``free``) whose cached tokens share the longest
    prefix with ``prompt``, and how many tokens it can reuse: never the whole prompt (its
    last token is evaluated for the logits). Ties go to ``lowest`` (no move)."""
    best, common = lowest, 0
    for slot in [lowest, *free]:
        shared = min(common_prefix(cached[slot], prompt), len(prompt) - 1)
        if shared > common:
            best, common = slot, shared
    return best, common


def kv_streams(parallel: int, reuse: bool) -> int:
    """KV streams of a context serving ``parallel`` sequences: one more with prefix reuse
    (the spare that lets two slots swap their cells), unless there is a single slot."""
    return parallel + 1 if reuse and parallel > 1 else parallel
