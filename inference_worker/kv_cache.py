"""The host-memory prompt cache of one resident model: KV states of prompts whose cells
a slot gave up, kept to be restored when a later prompt extends them.

A batch scheduler's free slots keep their cells for prefix reuse
(``inference_worker/prefix.py``), but a slot taken by an unrelated prompt loses
them. Before that happens the slot's state (``llama_state_seq_get_data``,
``inference_worker/kv_state.py``) is kept here, up to ``KV_CACHE_BYTES`` per
model, least recently used evicted first. A kept state may also be only on disk
(saved when its model left memory, ``inference_worker/kv_disk.py``): it then
costs no memory until a prompt extends it and it is read back.

The decisions (``should_restore``, ``worth_keeping``, ``best``) are pure; this
module makes no llama.cpp call and touches no file. Thread-safe.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

# Restoring a state costs a fixed part (the call, llama.cpp finding cells, a trim) and a
# copy of every kept token's cells; evaluating costs a forward pass per token. Measured on
# Gemma 3 270M, CPU, busy machine (benchmarks/kvcache.py --break-even): a restore takes
# 0.6 ms plus 8 us per token of the state (1,024 tokens: 9 ms), evaluation 15-40 ms per token
# on one thread (about 3 ms on four idle ones). So restoring N tokens costs what evaluating
# about 0.2 + 0.003 * N tokens does at worst: the rule below asks a restore to save one token
# plus 1% of the state's tokens, three times that margin, for backends where evaluation is
# faster relative to a host copy (a GPU).
RESTORE_FIXED_TOKENS = 1.0
RESTORE_TOKEN_COST = 0.01
# Fewer lost cells than this are not worth a copy into host memory (a restore of them would
# not beat evaluating them again by much, and each entry costs a lookup).
MIN_KEEP_TOKENS = 16


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def should_restore(kept_common: int, slot_common: int, state_tokens: int) -> bool:
    """Whether restoring a kept state of ``state_tokens`` tokens, ``kept_common`` of which
    the prompt shares, beats starting from the slot's own ``slot_common`` shared tokens."""
    gain = kept_common - slot_common  # tokens a restore saves evaluating
    return gain > RESTORE_FIXED_TOKENS + RESTORE_TOKEN_COST * state_tokens


def worth_keeping(lost_tokens: int) -> bool:
    """Whether ``lost_tokens`` cells about to be dropped are worth a copy in host memory."""
    return lost_tokens >= MIN_KEEP_TOKENS


@dataclass(eq=False)
class KeptPrompt:
    """One kept prompt state: in host memory (``data``), on disk (``path``) or both."""

    tokens: tuple[int, ...]
    nbytes: int
    data: bytearray | None = None
    path: Path | None = None


class PromptCache:
    """Kept prompt states of one model, least recently used first; at most ``capacity``
    bytes of them in host memory (0: none kept). Entries only on disk cost nothing here."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[int, ...], KeptPrompt] = OrderedDict()
        self.restored = 0  # restores since the model was loaded
        self.restored_tokens = 0  # prompt tokens they saved evaluating

    def best(self, prompt: list[int]) -> tuple[KeptPrompt | None, int]:
        """The entry sharing the longest prefix with ``prompt`` and how many tokens it can
        give (never the whole prompt: its last token is evaluated for the logits)."""
        best, common = None, 0
        with self._lock:
            for entry in self._entries.values():
                shared = min(common_prefix(entry.tokens, prompt), len(prompt) - 1)
                if shared > common:
                    best, common = entry, shared
        return best, common

    def keep(self, tokens: tuple[int, ...], data: bytearray) -> list[KeptPrompt]:
        """Keep ``data``, the state of ``tokens``; returns the entries whose memory copy was
        dropped to make room (LRU). A prompt a kept one already extends is not kept; kept
        ones it extends are replaced. Nothing is kept that exceeds the capacity alone."""
        if len(data) > self.capacity:
            return []
        with self._lock:
            for kept in list(self._entries.values()):
                if common_prefix(kept.tokens, tokens) == len(tokens):
                    self._entries.move_to_end(kept.tokens)
                    return []  # an entry holds all of it already
                if common_prefix(kept.tokens, tokens) == len(kept.tokens):
                    del self._entries[kept.tokens]  # it holds all of that one
            self._entries[tokens] = KeptPrompt(tokens, len(data), data)
            return self._fit()

    def index(self, tokens: tuple[int, ...], nbytes: int, path: Path) -> None:
        """Know of a state saved on disk (not in memory); the least recently used place."""
        with self._lock:
            if tokens not in self._entries:
                self._entries[tokens] = KeptPrompt(tokens, nbytes, None, path)
                self._entries.move_to_end(tokens, last=False)

    def loaded(self, entry: KeptPrompt, data: bytearray) -> list[KeptPrompt]:
        """``entry``'s state was read back from disk into memory; returns entries dropped."""
        with self._lock:
            if entry.tokens not in self._entries:
                return []
            entry.data, entry.nbytes = data, len(data)
            self._entries.move_to_end(entry.tokens)
            return self._fit(keep=entry)

    def used(self, entry: KeptPrompt, tokens: int) -> None:
        """``entry`` was restored and saved evaluating ``tokens`` prompt tokens."""
        with self._lock:
            if entry.tokens in self._entries:
                self._entries.move_to_end(entry.tokens)
            self.restored += 1
            self.restored_tokens += tokens

    def discard(self, entry: KeptPrompt) -> None:
        with self._lock:
            if self._entries.get(entry.tokens) is entry:
                del self._entries[entry.tokens]

    def entries(self) -> list[KeptPrompt]:
        """Every entry, least recently used first."""
        with self._lock:
            return list(self._entries.values())

    @property
    def bytes_in_memory(self) -> int:
        with self._lock:
            return sum(e.nbytes for e in self._entries.values() if e.data is not None)

    def _fit(self, keep: KeptPrompt | None = None) -> list[KeptPrompt]:
        """Drop memory copies, least recently used first, until the capacity holds (under
        the lock); an entry also on disk stays known there."""
        dropped = []
        used = sum(e.nbytes for e in self._entries.values() if e.data is not None)
        for entry in list(self._entries.values()):
            if used <= self.capacity:
                break
            if entry.data is None or entry is keep:
                continue
            used -= entry.nbytes
            entry.data = None
            dropped.append(entry)
            if entry.path is None:
                del self._entries[entry.tokens]
        return dropped
