"""Bounded background work on reused buffers, so reading, hashing and writing an upload overlap.

Receiving a model is three kinds of work per block: reading it from the
socket, feeding it to the digest and writing it to the file. Each releases the
GIL while it runs, so the reader (the caller's thread) and a thread that
hashes and writes run on different cores at once. The blocks live in a fixed
set of buffers that go round: read, hashed and written, free again. Reusing them
avoids allocating (and the kernel zeroing) a fresh buffer per block.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

_STOP = object()
_POLL_SECONDS = 0.05


class Stage:
    """Applies ``work`` to each submitted item, in order, on its own thread.

    At most ``depth`` items wait at once (``submit`` blocks when full), which
    bounds the memory held by a fast producer. An exception raised by ``work``
    stops the stage (later items are dropped) and is re-raised by ``check``,
    the next ``submit`` or ``finish``.
    """

    def __init__(self, work: Callable[[object], object], *, depth: int, name: str):
        self._work = work
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self.error is None:
                try:
                    self._work(item)
                except BaseException as err:  # re-raised in the producer's thread
                    self.error = err

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def submit(self, item: object) -> None:
        self.check()
        self._queue.put(item)

    def finish(self) -> None:
        """Wait until every submitted item is processed; re-raise the stage's error."""
        self._queue.put(_STOP)
        self._thread.join()
        self.check()

    def abort(self) -> None:
        """Stop without raising (used while another error is propagating)."""
        self.error = self.error or RuntimeError("aborted")
        self._queue.put(_STOP)
        self._thread.join()


class BufferPipeline:
    """``count`` buffers of ``size`` bytes that go round: filled, hashed and written, free again.

    The producer ``take``s a free buffer, fills a prefix of it and ``submit``s
    it; one background thread feeds it to ``digest`` (if any) and then to
    ``write``, after which the buffer is free again. The producer's thread
    does nothing but read, so reading overlaps hashing and writing. (Measured
    on two cores: hashing on the producer's thread, or on a third thread, was
    slower: the producer fell behind the socket, or three threads plus the
    sender contended for the cores.) Use as a context manager: leaving
    normally waits for every block to be written and re-raises the
    background thread's error; leaving with an exception stops it. One
    producer thread only.
    """

    def __init__(
        self,
        write: Callable[[memoryview], object],
        digest: Callable[[memoryview], object] | None,
        count: int,
        size: int,
    ):
        self._free: queue.Queue = queue.Queue()
        for _ in range(count):
            self._free.put(memoryview(bytearray(size)))
        self._digest = digest
        self._write = write
        self._writer = Stage(self._work, depth=count, name="upload-write")

    def _work(self, item: tuple[memoryview, int]) -> None:
        buffer, count = item
        block = buffer[:count]
        if self._digest is not None:
            self._digest(block)
        self._write(block)
        self._free.put(buffer)

    def take(self) -> memoryview:
        """A free buffer (blocks while all are in flight; raises the writer's error)."""
        while True:
            self._writer.check()
            try:
                return self._free.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                continue

    def submit(self, buffer: memoryview, count: int) -> None:
        """Hash and write ``buffer[:count]`` in the background; the buffer comes back after."""
        self._writer.submit((buffer, count))

    def __enter__(self) -> BufferPipeline:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._writer.finish()
        else:
            self._writer.abort()
