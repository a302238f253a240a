"""Progress of one long transfer (a push on the store, an upload on the worker).

``Progress`` counts bytes as they go, logs at most one line per second
(percent, MB/s, ETA) and describes itself for ``GET /status``. ``Transfers``
holds the ones running now; inside ``Transfers.track`` the transfer is also
``current_progress()``, so a transport deep below reports to it without
every ``push`` signature carrying it. Both classes are thread-safe: one
thread advances a transfer while request threads read it.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

LOG_INTERVAL_SECONDS = 1.0

_CURRENT: contextvars.ContextVar[Progress | None] = contextvars.ContextVar(
    "model_swap_progress", default=None
)


def current_progress() -> Progress | None:
    """The transfer this thread is tracking now (``Transfers.track``), if any."""
    return _CURRENT.get()


class Progress:
    """One transfer of ``total`` bytes (None: unknown) of ``model``."""

    def __init__(
        self,
        model: str,
        total: int | None,
        *,
        what: str = "push",
        logger: logging.Logger | None = None,
        clock=time.monotonic,
    ):
        self.model = model
        self.total = total
        self.what = what
        self.done = 0
        self._logger = logger
        self._clock = clock
        self.started = clock()
        self._last_log = self.started
        self._lock = threading.Lock()

    def advance(self, nbytes: int) -> None:
        """``nbytes`` more have gone; logs a progress line if a second has passed since the last."""
        with self._lock:
            self.done += nbytes
            now = self._clock()
            due = now - self._last_log >= LOG_INTERVAL_SECONDS
            if due:
                self._last_log = now
        if due and self._logger is not None:
            view = self.describe()
            self._logger.info(
                "%s of %s: %s%% of %s bytes, %.1f MB/s, ETA %s",
                self.what,
                self.model,
                "?" if view["percent"] is None else f"{view['percent']:.0f}",
                "?" if self.total is None else self.total,
                view["mb_per_s"],
                "?" if view["eta_seconds"] is None else f"{view['eta_seconds']:.0f}s",
            )

    def set_done(self, nbytes: int) -> None:
        """The absolute count (for senders that learn it in steps)."""
        with self._lock:
            step = nbytes - self.done
        if step > 0:
            self.advance(step)

    def describe(self) -> dict:
        """What ``GET /status`` shows of a running transfer."""
        with self._lock:
            done, seconds = self.done, max(0.0, self._clock() - self.started)
        rate = done / seconds if seconds > 0 else 0.0
        eta = None
        if self.total is not None and rate > 0:
            eta = max(0.0, (self.total - done) / rate)
        percent = None if not self.total else min(100.0, 100.0 * done / self.total)
        return {
            "model": self.model,
            "bytes_done": done,
            "bytes_total": self.total,
            "percent": None if percent is None else round(percent, 1),
            "seconds": round(seconds, 3),
            "mb_per_s": round(rate / 1e6, 1),
            "eta_seconds": None if eta is None else round(eta, 1),
        }


class Transfers:
    """The transfers running now, by id, for ``GET /status`` and the metrics."""

    def __init__(self):
        self._lock = threading.Lock()
        self._running: dict[int, Progress] = {}
        self._ids = itertools.count()

    @contextmanager
    def track(self, progress: Progress) -> Iterator[Progress]:
        """Count ``progress`` as running, and as ``current_progress()``, for the block."""
        key = next(self._ids)
        with self._lock:
            self._running[key] = progress
        token = _CURRENT.set(progress)
        try:
            yield progress
        finally:
            _CURRENT.reset(token)
            with self._lock:
                self._running.pop(key, None)

    def running(self) -> list[Progress]:
        with self._lock:
            return list(self._running.values())

    def latest(self, model: str | None = None) -> Progress | None:
        """The most recently started running transfer (of ``model``, if given)."""
        found = [p for p in self.running() if model is None or p.model == model]
        return found[-1] if found else None

    def describe(self) -> list[dict]:
        return [progress.describe() for progress in self.running()]
