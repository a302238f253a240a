"""Prefix reuse: the KV cells each slot of a batch scheduler keeps, and which free
slot's cells a new prompt starts from.

``KeptCells`` belongs to the loop thread of ``inference_worker/batch.py``: per slot,
the token ids whose KV cells the slot's stream holds, in position order, and the
llama.cpp calls that move, trim and drop them. ``best_prefix`` is the pure choice.
"""

from __future__ import annotations

import llama_cpp


class KeptCells:
    """The token ids each slot's KV stream holds; the last stream may be a spare one."""

    def __init__(self, memory, parallel: int, streams: int):
        self._memory = memory
        self._spare = streams - 1 if streams > parallel else None
        self.tokens: list[list[int]] = [[] for _ in range(parallel)]

    def place(self, slot: int, free: list[int], prompt: list[int], reuse: bool) -> tuple[int, int]:
        """Prepare ``slot`` for ``prompt``: the kept cells sharing its longest prefix (from
        ``slot`` or swapped in from one of the ``free`` slots), trimmed to that prefix.
        Returns the prompt tokens it holds and the swaps made (0 or 1)."""
        best, common = best_prefix(self.tokens, free, slot, prompt) if reuse else (slot, 0)
        if best != slot:
            self.swap(slot, best)
        return self.trim(slot, common), int(best != slot)

    def swap(self, a: int, b: int) -> None:
        """Exchange the KV streams and tokens of slots ``a`` and ``b``.

        llama.cpp copies the streams at the start of the next llama_decode, in the order
        asked, before anything is written; without a spare stream ``b`` just moves to
        ``a`` and ``a``'s cells are lost.
        """
        memory, spare = self._memory, self._spare
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


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


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
