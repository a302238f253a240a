"""Sending a response on a client connection of the front server, and cutting slow readers.

``Sender.sendall`` writes a response's bytes on a blocking socket. Two bounds:

- ``io_timeout`` (STREAM_WRITE_TIMEOUT): a write that makes no progress for this
  many seconds fails (a client that stopped reading);
- ``min_rate`` (MIN_DOWNLOAD_RATE): a client that reads, but slower than this many
  bytes per second, is cut (``SlowDownload``). The rate is judged over ``window``
  seconds of *waiting for the client* (time blocked in send), not of wall time,
  so a generation that produces tokens slowly for a fast reader is never cut:
  its writes return at once and add no waiting.

Either failure is an OSError: ``run_wsgi`` closes the app's iterable, which ends
a generation and releases its model like a disconnect.
"""

from __future__ import annotations

import socket
import time

# A slow reader is judged over this many seconds spent waiting for it (MIN_DOWNLOAD_RATE).
DOWNLOAD_RATE_WINDOW = 30.0


class SlowDownload(ConnectionError):
    """The client read a response slower than MIN_DOWNLOAD_RATE over a window."""


class Sender:
    """Writes one connection's responses (see the module docstring). Not thread-safe."""

    def __init__(
        self,
        sock: socket.socket,
        io_timeout: float,
        min_rate: float = 0.0,
        window: float = DOWNLOAD_RATE_WINDOW,
        clock=time.monotonic,
    ):
        self._sock = sock
        self._io_timeout = io_timeout
        self._min_rate = min_rate
        self._window = window
        self._clock = clock
        self._waited = 0.0  # seconds blocked in send in the current window
        self._bytes = 0  # bytes sent in the current window
        self.sent = 0
        self._armed = False

    def sendall(self, data: bytes) -> None:
        """Send all of ``data``; raises TimeoutError, SlowDownload or another OSError."""
        if not self._min_rate:
            self._sock.sendall(data)
            self.sent += len(data)
            return
        if not self._armed:
            # One send blocks at most a window, so a stalled reader is judged in time. Set
            # once, at the first write (a timeout per send costs a system call each), after
            # the app has usually read its request body with the socket's own timeout.
            self._sock.settimeout(min(self._io_timeout, self._window))
            self._armed = True
        view = memoryview(data).cast("B")
        stalled_since = None
        while view:
            start = self._clock()
            try:
                count = self._sock.send(view)
            except TimeoutError:  # blocked for a whole window: judged below
                count = 0
            now = self._clock()
            self._waited += now - start
            self._bytes += count
            self.sent += count
            if count:
                view, stalled_since = view[count:], None
            elif stalled_since is None:
                stalled_since = start
            if stalled_since is not None and now - stalled_since >= self._io_timeout:
                raise TimeoutError(f"the client read nothing for {self._io_timeout:g} s")
            if self._waited >= self._window:
                self._judge()

    def _judge(self) -> None:
        rate = self._bytes / self._waited
        if rate < self._min_rate:
            raise SlowDownload(
                f"the client read {self._bytes} bytes in {self._waited:.1f} s of waiting "
                f"({rate:.0f} bytes/s), below MIN_DOWNLOAD_RATE ({self._min_rate:.0f} bytes/s)"
            )
        self._waited, self._bytes = 0.0, 0
