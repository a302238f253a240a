"""Parsing untrusted HTTP/1.1 request bytes with llhttp (the parser of Node.js, via httptools).

``RequestParser`` reads one request: its head, fed as it arrives (``feed_head``),
and then, for a chunked body, its framing (``feed_body``), while the chunk
data itself goes from the socket straight into the app's buffers and past the
parser without a copy (no ``on_body`` callback is installed). The caller feeds
exactly the bytes of this request, so nothing after it (a pipelined request)
reaches the parser. Whatever llhttp refuses is ``BadHead`` (the head) or
``BadFraming`` (a chunked body), never another exception: a status and a
message for the client. Not thread-safe (one connection's reader at a time).
"""

from __future__ import annotations

from dataclasses import dataclass

import httptools

MAX_HEADERS = 100
MAX_TRAILERS = 100
HEAD_END = b"\r\n\r\n"


class BadHead(ValueError):
    """A request head that is not valid HTTP/1.x; ``status`` is the answer (400, 431, 501...)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class BadFraming(ValueError):
    """A chunked request body whose framing llhttp refused."""


@dataclass
class Head:
    """A parsed request head."""

    method: str
    target: str
    version: str  # "HTTP/1.1" or "HTTP/1.0"
    headers: list[tuple[str, str]]  # names lower-cased, in order
    content_length: int | None = None
    chunked: bool = False
    keep_alive: bool = True
    expect_continue: bool = False

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class _TooMany(Exception):
    pass


class RequestParser:
    """One request's parser (see the module docstring)."""

    def __init__(self):
        self._parser = httptools.HttpRequestParser(self)
        self._url = bytearray()
        self._headers: list[tuple[bytes, bytes]] = []
        self._trailers = 0
        self._head_done = False
        self._upgrade = False
        self.complete = False  # the whole request (head and body) was parsed

    # -- llhttp's callbacks (during feed_data) --

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._head_done:
            self._trailers += 1
            if self._trailers > MAX_TRAILERS:
                raise _TooMany(f"more than {MAX_TRAILERS} trailer lines")
            return
        if len(self._headers) >= MAX_HEADERS:
            raise _TooMany(f"more than {MAX_HEADERS} header lines")
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._head_done = True

    def on_message_complete(self) -> None:
        self.complete = True

    # -- the head --

    def feed_head(self, data: bytes | memoryview, ends_head: bool) -> Head | None:
        """Feed the next bytes of the head; ``ends_head`` when they end with its empty line
        (the caller delimits the head, so no body byte reaches this parser here). Returns
        the Head once complete; raises BadHead."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._upgrade = True  # CONNECT or Upgrade: served as a plain request, then closed
        except httptools.HttpParserCallbackError as err:
            cause = err.__context__
            if isinstance(cause, _TooMany):
                raise BadHead(str(cause), 431) from None
            raise BadHead("malformed request head") from None
        except httptools.HttpParserError as err:
            raise BadHead(f"malformed request head: {_reason(err)}") from None
        if self._head_done != ends_head:
            raise BadHead("malformed request head: the empty line does not end it")
        return self._head() if ends_head else None

    def _head(self) -> Head:
        version = "HTTP/" + self._parser.get_http_version()
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise BadHead(f"unsupported protocol {version[:20]!r}", 505)
        method = self._parser.get_method().decode("ascii", "replace")
        if not self._url:
            raise BadHead("malformed request target")
        headers = [(n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in self._headers]
        head = Head(method, self._url.decode("latin-1"), version, headers)
        lengths = [value for key, value in headers if key == "content-length"]
        codings = [value.lower() for key, value in headers if key == "transfer-encoding"]
        if codings:  # llhttp refused Content-Length beside it
            if ",".join(codings).replace(" ", "") != "chunked" or version != "HTTP/1.1":
                raise BadHead("unsupported Transfer-Encoding", 501)
            head.chunked = True
        elif lengths:  # one, of ASCII digits, under 2**64: llhttp checked
            head.content_length = int(lengths[0])
        tokens = {t.strip().lower() for t in (head.header("connection") or "").split(",")}
        head.keep_alive = "keep-alive" in tokens if version == "HTTP/1.0" else "close" not in tokens
        head.keep_alive = head.keep_alive and not self._upgrade
        head.expect_continue = (head.header("expect") or "").lower() == "100-continue"
        if self.complete and (head.chunked or head.content_length):
            raise BadHead("malformed request head")  # pragma: no cover - llhttp's own rule
        return head

    # -- a chunked body --

    def feed_body(self, data: bytes | memoryview) -> None:
        """Feed the next bytes of a chunked body (framing lines with their CRLF, or chunk
        data); raises BadFraming."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as err:
            raise BadFraming(f"chunked body: {err.__context__ or err}") from None
        except httptools.HttpParserError as err:
            raise BadFraming(f"chunked body: {_reason(err)}") from None


def chunk_size(line: bytes) -> int:
    """The size of a chunk-size line that ``feed_body`` accepted (hex digits, then perhaps
    whitespace or extensions)."""
    digits = line.split(b";", 1)[0].strip(b" \t")
    return int(digits, 16)


def _reason(err: Exception) -> str:
    return str(err)[:80] or type(err).__name__
