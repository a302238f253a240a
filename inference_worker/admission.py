"""Who waits for a batch scheduler's slots: reserved, queued, cancelled and released
sequences, first come, first served (the loop itself is ``inference_worker/batch.py``)."""

from __future__ import annotations

import threading
import time
from collections import deque

from inference_worker.sequence import SchedulerClosed, Sequence
from model_swap.generation import Sampling


class Admission:
    """The open sequences of one scheduler and the queue of those waiting for a slot.

    Thread-safe: every field is guarded by ``_cond``, which the loop also waits on.
    """

    def __init__(self, name: str):
        self.name = name
        self._cond = threading.Condition()
        self._waiting: deque[Sequence] = deque()
        self._open = 0  # submitted and not released
        self._admitted_open = 0  # of those, admitted to a slot
        self._closing = False

    @property
    def running(self) -> int:
        """Released-not-yet sequences that hold or held a slot."""
        with self._cond:
            return self._admitted_open

    @property
    def queued(self) -> int:
        """Sequences waiting for a free slot."""
        with self._cond:
            return len(self._waiting)

    def reserve(self) -> Sequence:
        """A sequence counted as open (``close`` waits for it) but not queued yet.

        Raises SchedulerClosed while the model is being unloaded. Follow with
        ``start`` or ``release``.
        """
        with self._cond:
            if self._closing:
                raise SchedulerClosed(f"{self.name} is being unloaded")
            self._open += 1
        return Sequence()

    def start(self, seq: Sequence, prompt: list[int], max_tokens: int, sampling: Sampling) -> None:
        """Queue ``seq`` for a free slot (first come, first served); never blocks."""
        seq.prompt, seq.max_tokens, seq.sampling = prompt, max_tokens, sampling
        with self._cond:
            if seq.cancelled:
                return
            seq.submitted = time.perf_counter()
            self._waiting.append(seq)
            self._cond.notify_all()

    def cancel(self, seq: Sequence) -> None:
        """Stop ``seq`` at the next step (its reader has what it wants); it stays open."""
        with self._cond:
            seq.cancelled = True
            self._cond.notify_all()

    def release(self, seq: Sequence) -> bool:
        """The reader is done with ``seq``: stop it at the next step if it still runs.

        Idempotent: True the first time, False after.
        """
        with self._cond:
            if seq.released:
                return False
            seq.released = seq.cancelled = True
            if seq in self._waiting:
                self._waiting.remove(seq)
            elif seq.admitted is not None:
                self._admitted_open -= 1
            self._open -= 1
            self._cond.notify_all()
        return True
