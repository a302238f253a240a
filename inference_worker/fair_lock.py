"""A first-come, first-served lock.

``threading.Lock`` gives no ordering guarantee; requests waiting for the one
llama.cpp context should be served in arrival order, so a long queue never
starves anyone.
"""

from __future__ import annotations

import itertools
import threading


class FairLock:
    """A non-reentrant lock granted in the order ``acquire`` was called. Thread-safe."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._tickets = itertools.count()
        self._serving = 0
        self._waiting = 0

    @property
    def waiting(self) -> int:
        """How many callers are blocked in ``acquire`` now."""
        with self._cond:
            return self._waiting

    def acquire(self) -> None:
        """Block until every earlier caller has acquired and released the lock."""
        with self._cond:
            ticket = next(self._tickets)
            self._waiting += 1
            while ticket != self._serving:
                self._cond.wait()
            self._waiting -= 1

    def release(self) -> None:
        with self._cond:
            self._serving += 1
            self._cond.notify_all()

    def __enter__(self) -> FairLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
