"""A bounded background stage, so reading, writing and hashing an upload overlap.

Receiving a model is three kinds of work per block: reading it from the
socket, writing it to the file and feeding it to sha256. Each releases the
GIL while it runs, so giving writing and hashing a thread each lets them run
on other cores while the request thread reads the next block.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

_STOP = object()


class Stage:
    """Applies ``work`` to each submitted item, in order, on its own thread.

    At most ``depth`` items wait at once (``submit`` blocks when full), which
    bounds the memory held by a fast producer. An exception raised by ``work``
    stops the stage and is re-raised by the next ``submit`` or by ``finish``.
    """

    def __init__(self, work: Callable[[bytes], object], *, depth: int, name: str):
        self._work = work
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._error is None:
                try:
                    self._work(item)
                except BaseException as err:  # re-raised in the producer's thread
                    self._error = err

    def submit(self, item: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(item)

    def finish(self) -> None:
        """Wait until every submitted item is processed; re-raise the stage's error."""
        self._queue.put(_STOP)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Stop without raising (used while another error is propagating)."""
        self._error = self._error or RuntimeError("aborted")
        self._queue.put(_STOP)
        self._thread.join()
