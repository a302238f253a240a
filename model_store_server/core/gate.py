"""The gate: the one state machine that says who may use a worker right now.

States of one worker: generations running per model (hits), and the one
slot, which is free, held by a swap (that changes the models in
``changing``, and may be draining some models: no new hits on them), or held
exclusively (a sync or reset: no new hits at all, every generation ended).
Only this class reads or writes those flags; ``WorkerView`` calls its named
transitions. Every method expects the caller to hold ``cond`` (the view's
one lock), and never blocks except ``wait`` (bounded by a deadline).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

from model_swap.errors import Unavailable


class Busy(Exception):
    """A wait for the slot or for running generations exceeded its deadline."""


def busy(err: Busy) -> Unavailable:
    """The 503 for a request whose waits ran past its deadline (retry in a second)."""
    return Unavailable(f"busy: {err}", retry_after=1, type="busy")


class WorkerDown(Exception):
    """The worker was marked down: a waiting request goes elsewhere (nothing was changed)."""


class Gate:
    """See the module docstring. Not thread-safe on its own: hold ``cond``."""

    FREE, SWAP, EXCLUSIVE = "free", "swap", "exclusive"

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self._active: Counter[str] = Counter()
        self._slot = Gate.FREE
        self._changing: frozenset[str] = frozenset()
        self._draining: frozenset[str] = frozenset()

    # -- reading ---------------------------------------------------------------------

    @property
    def slot(self) -> str:
        return self._slot

    @property
    def slot_free(self) -> bool:
        return self._slot == Gate.FREE

    @property
    def swapping(self) -> bool:
        return self._slot != Gate.FREE

    def changing(self, model: str) -> bool:
        """Whether a swap running now changes ``model`` (loads or takes it away)."""
        return model in self._changing

    def admits_hit(self, model: str) -> bool:
        """Whether a new generation on ``model`` may start as far as the slot goes."""
        return (
            self._slot != Gate.EXCLUSIVE
            and model not in self._changing
            and model not in self._draining
        )

    def generating(self, model: str) -> int:
        return self._active[model]

    def active(self) -> dict[str, int]:
        return dict(self._active)

    @property
    def idle(self) -> bool:
        """Nothing held: no generation, the slot free, nothing draining."""
        return not self._active and self._slot == Gate.FREE and not self._draining

    # -- waiting ---------------------------------------------------------------------

    def wait(self, ready: Callable[[], bool], deadline: float, what: str) -> None:
        """Wait on ``cond`` until ``ready()``; Busy at ``deadline`` (time.monotonic)."""
        while not ready():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Busy(f"timed out waiting for {what}")
            self.cond.wait(remaining)

    # -- hits --------------------------------------------------------------------------

    def enter(self, model: str) -> None:
        """A generation starts on ``model``."""
        self._active[model] += 1

    def leave(self, model: str) -> bool:
        """A generation on ``model`` ended; True if none runs on it any more."""
        self._active[model] -= 1
        if self._active[model] <= 0:
            del self._active[model]
        self.cond.notify_all()
        return model not in self._active

    # -- the slot ----------------------------------------------------------------------

    def take_swap(self) -> None:
        if self._slot != Gate.FREE:
            raise RuntimeError(f"the slot is held ({self._slot})")
        self._slot = Gate.SWAP

    def change(self, models: frozenset[str]) -> None:
        """The swap holding the slot is about to change ``models`` on the worker."""
        self._changing = models

    def drain(self, models: frozenset[str]) -> None:
        """No new hits on ``models`` (the slot holder waits for their generations)."""
        self._draining = models

    def take_exclusive(self, deadline: float) -> None:
        """Take the slot with no generation running; Busy (nothing taken) at ``deadline``."""
        self.wait(lambda: self._slot == Gate.FREE, deadline, "another model swap to finish")
        self._slot = Gate.EXCLUSIVE
        try:
            self.wait(lambda: not self._active, deadline, "running generations to finish")
        except Busy:
            self.release()
            raise

    def release(self, *, changed: bool = True) -> None:
        """Free the slot (whoever held it), with nothing changing or draining. Waiters are
        woken unless nothing ``changed`` (a patient swap that only looked)."""
        self._slot = Gate.FREE
        self._changing = self._draining = frozenset()
        if changed:
            self.cond.notify_all()
