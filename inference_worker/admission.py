"""Who waits for a batch scheduler's slots: reserved, queued, cancelled and released
sequences, first come, first served (the loop itself is ``inference_worker/batch.py``)."""

from __future__ import annotations

import threading
import time
from collections import deque

from inference_worker.sequence import SchedulerClosed, Sequence
from model_swap.generation import Sampling

# The longest an idle scheduler waits for the rest of a group of requests sent together
# (their HTTP hops from the store, a few ms each on loopback; tens of ms on a busy machine).
GATHER_WINDOW = 0.1


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

    def start(
        self,
        seq: Sequence,
        prompt: list[int],
        max_tokens: int,
        sampling: Sampling,
        together: int = 1,
    ) -> None:
        """Queue ``seq`` for a free slot (first come, first served); never blocks.

        ``together``: how many requests were sent to this model at once with this one (the
        store's group after a swap); see ``gathering``.
        """
        seq.prompt, seq.max_tokens, seq.sampling = prompt, max_tokens, sampling
        seq.together = together
        with self._cond:
            if seq.cancelled:
                return
            seq.submitted = time.perf_counter()
            self._waiting.append(seq)
            self._cond.notify_all()

    def gathering(self, slots: int, now: float) -> float:
        """Seconds the loop of an idle scheduler should still wait before its first step
        (under ``_cond``): while the first waiting request says more were sent with it and
        not all of them (up to ``slots``) have arrived, at most ``GATHER_WINDOW`` after it
        did. Their prompts then share one step instead of the first one's prompt going
        alone and the others' a step later. 0: step now."""
        if not self._waiting:
            return 0.0
        first = self._waiting[0]
        if len(self._waiting) >= min(first.together, slots):
            return 0.0
        return max(0.0, first.submitted + GATHER_WINDOW - now)

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
