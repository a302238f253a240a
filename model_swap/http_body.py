"""A request body of the front server as the app reads it (model_swap/http_front.py).

``SizedBody`` (Content-Length) and ``ChunkedBody`` hand out the bytes already
received with the head first, then ``recv_into`` the caller's buffer straight
from the socket (an upload is not copied on the way; llhttp checks a chunked
body's framing, model_swap/http_parse.py), and cut a body that
arrives slower than ``MIN_UPLOAD_RATE`` over a window (``SlowUpload``).
"""

from __future__ import annotations

import io
import os
import select
import socket
import time
from collections.abc import Callable

from werkzeug.exceptions import BadRequest

from model_swap.http_parse import BadFraming, chunk_size

MAX_CHUNK_LINE = 8190  # longest chunk-size or trailer line
# A slow upload is judged over windows of this many seconds (MIN_UPLOAD_RATE).
UPLOAD_RATE_WINDOW = 30.0
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)


class SlowUpload(ConnectionError):
    """A request body arrived slower than MIN_UPLOAD_RATE over UPLOAD_RATE_WINDOW."""


class MalformedBody(BadRequest, ValueError):
    """A chunked body whose framing was refused: the app's 400 (werkzeug's BadRequest), and
    a ValueError for code that reads bodies without Flask."""

    def __init__(self, message: str):
        BadRequest.__init__(self, message)


class Body(io.RawIOBase):
    """A request body read from the socket: bytes already received first, then
    ``recv_into`` the caller's buffer. ``leftover()`` is what follows the body
    (a pipelined request). Raises SlowUpload when the body arrives slower than
    ``min_rate`` bytes/s over a window of ``window`` seconds of ``clock``, OSError on a
    broken connection."""

    def __init__(
        self,
        sock: socket.socket,
        held: bytes,
        min_rate: float,
        on_first_read=None,
        window: float = UPLOAD_RATE_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__()
        self._window = window
        self._clock = clock
        self._sock = sock
        self._held = bytearray(held)
        self._min_rate = min_rate
        self._on_first_read = on_first_read
        self._window_start = clock()
        self._window_bytes = 0
        self.done = False
        self.broken = False  # its framing was refused: nothing after it can be trusted

    def readable(self) -> bool:
        return True

    def leftover(self) -> bytes:
        return bytes(self._held)

    def discard(self, limit: int) -> bool:
        """Read and drop what the app left of the body, up to ``limit`` bytes; True if the
        body is then read to its end (the connection can serve another request)."""
        if self._on_first_read is not None or self.broken:
            # Never asked for ("100 Continue" not sent), or its framing broke: the
            # connection cannot carry another request.
            return False
        scratch = memoryview(bytearray(16 * 1024))
        dropped = 0
        try:
            while not self.done and dropped <= limit:
                count = self.readinto(scratch)
                if not count:
                    break
                dropped += count
        except (OSError, ValueError):
            return False
        return self.done

    def _take(self, buffer: memoryview, limit: int) -> int:
        if self._held:
            count = min(limit, len(self._held))
            buffer[:count] = self._held[:count]
            del self._held[:count]
            return count
        if self._on_first_read is not None:
            self._on_first_read()
            self._on_first_read = None
        return self._recv(buffer, limit)

    def _recv(self, buffer: memoryview, limit: int) -> int:
        def recv(timeout: float | None) -> int:
            if timeout is None:  # the socket's own timeout
                return self._sock.recv_into(buffer, limit)
            saved = self._sock.gettimeout()
            self._sock.settimeout(timeout)
            try:
                return self._sock.recv_into(buffer, limit)
            finally:
                self._sock.settimeout(saved)

        return self._read(recv)

    def _splice(self, pipe: int, limit: int) -> int:
        def splice(timeout: float | None) -> int:
            wait = self._sock.gettimeout() if timeout is None else timeout
            poller = select.poll()
            poller.register(self._sock.fileno(), select.POLLIN)
            while True:
                if not poller.poll(None if wait is None else wait * 1000):
                    raise TimeoutError("timed out")
                try:
                    return os.splice(self._sock.fileno(), pipe, limit, flags=_SPLICE_FLAGS)
                except BlockingIOError:  # woken without data (the socket is non-blocking)
                    continue

        return self._read(splice)

    def _read(self, read) -> int:
        """One ``read(timeout)`` of at least a byte; ``timeout`` None is the socket's own.
        The timeout ends with the rate window, so a body that stalls is judged when its
        window ends, not only when its next bytes arrive."""
        if not self._min_rate:  # MIN_UPLOAD_RATE 0: only the socket's own timeout
            count = read(None)
            if not count:
                raise ConnectionError("the request body broke off")
            return count
        now = self._clock()
        if now - self._window_start >= self._window:
            self._check_rate(now)
        try:
            count = read(max(self._window_start + self._window - now, 0.01))
        except TimeoutError:
            self._check_rate(self._clock())
            return self._read(read)
        if not count:
            raise ConnectionError("the request body broke off")
        self._window_bytes += count
        return count

    def _check_rate(self, now: float) -> None:
        seconds = now - self._window_start
        if self._window_bytes < self._min_rate * seconds:
            raise SlowUpload(
                f"request body arrived at {self._window_bytes / seconds:.0f} bytes/s over "
                f"{seconds:.0f} s, below MIN_UPLOAD_RATE ({self._min_rate:.0f} bytes/s)"
            )
        self._window_start, self._window_bytes = now, 0


class SizedBody(Body):
    """A body of known length (Content-Length)."""

    def __init__(self, sock, held: bytes, length: int, min_rate: float, on_first_read=None, **kw):
        super().__init__(sock, held, min_rate, on_first_read, **kw)
        self._left = length
        self.done = length == 0

    def readinto(self, buffer) -> int:
        if self._left <= 0:
            return 0
        count = self._take(memoryview(buffer).cast("B"), min(len(buffer), self._left))
        self._left -= count
        self.done = self._left == 0
        return count

    def splice_into(self, pipe: int, limit: int) -> int:
        """Move up to ``limit`` bytes of the body into the pipe ``pipe`` (its write end)
        by splice(2), not through user space; the bytes held with the head go first.
        0 at the body's end; raises as ``readinto`` does."""
        limit = min(limit, self._left)
        if limit <= 0:
            return 0
        if self._held:
            count = os.write(pipe, self._held[:limit])
            del self._held[:count]
        else:
            if self._on_first_read is not None:
                self._on_first_read()
                self._on_first_read = None
            count = self._splice(pipe, limit)
        self._left -= count
        self.done = self._left == 0
        return count


class ChunkedBody(Body):
    """A chunked body: llhttp checks the framing (``RequestParser.feed_body``), chunk data
    goes straight to the caller. ``parser`` is the one that read this request's head."""

    def __init__(self, sock, held: bytes, min_rate: float, on_first_read=None, *, parser, **kw):
        super().__init__(sock, held, min_rate, on_first_read, **kw)
        self._parser = parser
        self._left = 0
        self._started = False

    def _line(self) -> bytes:
        """The next framing line (without its CRLF), fed to the parser."""
        while (end := self._held.find(b"\r\n")) < 0:
            if len(self._held) > MAX_CHUNK_LINE:
                raise BadFraming("chunked body: a framing line is too long")
            if self._on_first_read is not None:
                self._on_first_read()
                self._on_first_read = None
            more = bytearray(64 * 1024)
            count = self._recv(memoryview(more), len(more))
            self._held += more[:count]
        if end > MAX_CHUNK_LINE:
            raise BadFraming("chunked body: a framing line is too long")
        line = bytes(self._held[:end])
        del self._held[: end + 2]
        self._parser.feed_body(line + b"\r\n")
        return line

    def _next_chunk(self) -> None:
        if self._started:
            self._line()  # the CRLF after chunk data (the parser refuses anything else)
        self._started = True
        size = chunk_size(self._line())
        if size == 0:
            while not self._parser.complete:  # trailers, then the empty line
                self._line()
            self.done = True
        self._left = size

    def readinto(self, buffer) -> int:
        if not self.done and not self._left:
            try:
                self._next_chunk()
            except ValueError as err:
                self.broken = True
                raise MalformedBody(str(err)) from None
        if self.done:
            return 0
        view = memoryview(buffer).cast("B")
        count = self._take(view, min(len(view), self._left))
        try:
            self._parser.feed_body(view[:count])  # counted by llhttp, not copied
        except BadFraming:  # pragma: no cover - data within a chunk's size is never refused
            self.broken = True
            raise
        self._left -= count
        return count
