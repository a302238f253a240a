"""Counts of llama_decode calls by batch size and thread count, and of prompt tokens reused,
across schedulers.

``inference_worker/batch.py`` observes every call; ``/metrics`` reads the
histogram (``model_swap_worker_batch_tokens``) and the calls by threads
(``model_swap_worker_decode_steps_total{threads}``: what the thread rule chose).
"""

from __future__ import annotations

import bisect
import threading

# Tokens per llama_decode call, for the batch size histogram.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class BatchStats:
    """Counts of llama_decode calls by batch size, across schedulers. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.buckets = [0] * len(BATCH_BUCKETS)  # calls with <= bound tokens (not cumulative)
        self.over = 0
        self.calls = 0
        self.tokens = 0
        self.mixed = 0  # calls that carried prompt tokens and decoding sequences' tokens
        self.prompt_tokens = 0  # prompt tokens of admitted sequences
        self.reused_prompt_tokens = 0  # of those, found in kept KV cells (prefix reuse)
        self.restored_prompt_tokens = 0  # of those, restored from a kept prompt state
        self.by_threads: dict[int, int] = {}  # calls by the llama.cpp threads they ran on

    def observe(self, n_tokens: int, mixed: bool, threads: int = 1) -> None:
        index = bisect.bisect_left(BATCH_BUCKETS, n_tokens)
        with self._lock:
            self.calls += 1
            self.by_threads[threads] = self.by_threads.get(threads, 0) + 1
            self.mixed += mixed
            self.tokens += n_tokens
            if index < len(self.buckets):
                self.buckets[index] += 1
            else:
                self.over += 1

    def observe_prompt(self, tokens: int, reused: int, restored: int = 0) -> None:
        with self._lock:
            self.prompt_tokens += tokens
            self.reused_prompt_tokens += reused
            self.restored_prompt_tokens += restored

    def threads(self) -> dict[int, int]:
        """llama_decode calls by thread count (a copy)."""
        with self._lock:
            return dict(self.by_threads)

    def snapshot(self) -> tuple[list[tuple[str, int]], int, int]:
        """Cumulative ``(le, count)`` pairs ending with ``+Inf``, the call count, the token sum."""
        with self._lock:
            counts, over, calls, tokens = list(self.buckets), self.over, self.calls, self.tokens
        pairs, total = [], 0
        for bound, count in zip(BATCH_BUCKETS, counts, strict=True):
            total += count
            pairs.append((str(float(bound)), total))
        pairs.append(("+Inf", total + over))
        return pairs, calls, tokens
