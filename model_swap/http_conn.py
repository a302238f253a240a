"""A client connection of the front server and its bounds (model_swap/http_front.py).

``Conn.read_head`` feeds llhttp (model_swap/http_parse.py) the bytes of a request
head as they arrive, and never a byte past its empty line, so the body and any
pipelined request stay in ``buffer`` for whoever reads them next.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from model_swap.http_body import UPLOAD_RATE_WINDOW
from model_swap.http_parse import HEAD_END, BadHead, Head, RequestParser
from model_swap.http_request import MAX_HEAD_BYTES
from model_swap.http_send import DOWNLOAD_RATE_WINDOW


@dataclass(frozen=True)
class FrontLimits:
    """The front server's bounds (from the service's settings)."""

    threads: int = 64
    header_timeout: float = 10.0
    keepalive_timeout: float = 5.0
    max_connections: int = 4096
    min_upload_rate: float = 1_000_000.0
    io_timeout: float = 60.0
    upload_rate_window: float = UPLOAD_RATE_WINDOW  # seconds min_upload_rate is judged over
    max_queued: int = 256  # requests waiting for a thread; one more is answered 503
    min_download_rate: float = 1000.0  # bytes/s a response must be read at (0: off)
    download_rate_window: float = DOWNLOAD_RATE_WINDOW  # seconds of waiting it is judged over


class Conn:
    """One client connection. The loop owns it while ``busy`` is False, a thread while True."""

    __slots__ = (
        "sock",
        "peer",
        "buffer",
        "deadline",
        "busy",
        "head",
        "head_end",
        "continued",
        "parser",
        "fed",
    )

    def __init__(self, sock: socket.socket, peer, deadline: float):
        self.sock = sock
        self.peer = peer
        self.buffer = bytearray()
        self.deadline = deadline
        self.busy = False
        self.head: Head | None = None
        self.head_end = 0
        self.continued = False
        self.parser: RequestParser | None = None  # the request being read
        self.fed = 0  # bytes of ``buffer`` fed to ``parser``

    def read_head(self) -> bool:
        """Feed llhttp the new bytes of the head (never a byte past it); True once
        ``self.head`` is set. Raises BadHead."""
        if self.parser is None:
            skip = len(self.buffer) - len(self.buffer.lstrip(b"\r\n"))
            if skip:  # empty lines before a request are ignored (RFC 9112, 2.2)
                del self.buffer[:skip]
            if not self.buffer:
                return False
            self.parser, self.fed = RequestParser(), 0
        end = self.buffer.find(HEAD_END, max(self.fed - 3, 0))
        stop = len(self.buffer) if end < 0 else end + len(HEAD_END)
        # The limit counts the request line and header lines, not the empty line after
        # them; an unfinished head may end in up to 3 bytes of that terminator.
        size = end if end >= 0 else len(self.buffer) - (len(HEAD_END) - 1)
        if size > MAX_HEAD_BYTES:
            raise BadHead("request head is too large", 431)
        if stop > self.fed:
            head = self.parser.feed_head(bytes(self.buffer[self.fed : stop]), end >= 0)
            self.fed = stop
            if head is not None:
                self.head, self.head_end = head, stop
        return self.head is not None
