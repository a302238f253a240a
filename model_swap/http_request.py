"""One HTTP/1.1 request on a connection of the front server (model_swap/http_front.py).

Owns the parts of HTTP that do not depend on how connections are watched:
parsing a request head (``parse_head``), the request body as the app reads it
(``SizedBody``, ``ChunkedBody``, both ``readinto`` straight from the socket
into the caller's buffer, with the ``MIN_UPLOAD_RATE`` check), and running a
WSGI app for one request and writing its response (``run_wsgi``): each chunk
the app yields is sent at once (a token stream is one chunk per token),
chunked transfer encoding when the app gives no length.
"""

from __future__ import annotations

import io
import logging
import socket
import sys
import time
from dataclasses import dataclass
from email.utils import formatdate

logger = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024  # request line and headers together
MAX_HEADERS = 100
MAX_CHUNK_LINE = 8190  # longest chunk-size or trailer line
MAX_TRAILERS = 100
# A slow upload is judged over windows of this many seconds (MIN_UPLOAD_RATE).
UPLOAD_RATE_WINDOW = 30.0
SERVER_NAME = "model-swap"
# A body the app left unread is read and dropped up to this size to keep the connection.
DISCARD_LIMIT = 64 * 1024
_METHOD_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ-_")
_TOKEN_CHARS = frozenset(
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


class BadHead(ValueError):
    """A request head that is not valid HTTP/1.x; ``status`` is the answer (400, 431, 501...)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class SlowUpload(ConnectionError):
    """A request body arrived slower than MIN_UPLOAD_RATE over UPLOAD_RATE_WINDOW."""


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


def parse_head(raw: bytes) -> Head:
    """Parse a request head (without its final empty line); raises BadHead."""
    try:
        text = raw.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes any byte
        raise BadHead("undecodable request head") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise BadHead("malformed request line")
    method, target, version = parts
    if not method or not set(method.encode()) <= _METHOD_CHARS:
        raise BadHead("malformed request method")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise BadHead(f"unsupported protocol {version[:20]!r}", 505)
    if not target or any(ch <= " " or ch == "\x7f" for ch in target):
        raise BadHead("malformed request target")
    if len(lines) - 1 > MAX_HEADERS:
        raise BadHead(f"more than {MAX_HEADERS} header lines", 431)
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or not set(name.encode("latin-1")) <= _TOKEN_CHARS:
            raise BadHead("malformed header line")  # also obsolete line folding
        value = value.strip(" \t")
        if any(ch in value for ch in "\r\n\0"):
            raise BadHead("malformed header value")
        headers.append((name.lower(), value))
    head = Head(method, target, version, headers)
    lengths = {value for key, value in headers if key == "content-length"}
    codings = [value.lower() for key, value in headers if key == "transfer-encoding"]
    if codings:
        if lengths:
            raise BadHead("both Content-Length and Transfer-Encoding")
        if ",".join(codings).replace(" ", "") != "chunked" or version != "HTTP/1.1":
            raise BadHead("unsupported Transfer-Encoding", 501)
        head.chunked = True
    elif lengths:
        if len(lengths) > 1 or not next(iter(lengths)).isdigit():
            raise BadHead("invalid Content-Length")
        head.content_length = int(next(iter(lengths)))
    tokens = {t.strip().lower() for v in (head.header("connection") or "").split(",") for t in [v]}
    head.keep_alive = "keep-alive" in tokens if version == "HTTP/1.0" else "close" not in tokens
    head.expect_continue = (head.header("expect") or "").lower() == "100-continue"
    return head


class Body(io.RawIOBase):
    """A request body read from the socket: bytes already received first, then
    ``recv_into`` the caller's buffer. ``leftover()`` is what follows the body
    (a pipelined request). Raises SlowUpload when the body arrives slower than
    ``min_rate`` bytes/s over a window, OSError on a broken connection."""

    def __init__(
        self,
        sock: socket.socket,
        held: bytes,
        min_rate: float,
        on_first_read=None,
        window: float = UPLOAD_RATE_WINDOW,
    ):
        super().__init__()
        self._window = window
        self._sock = sock
        self._held = bytearray(held)
        self._min_rate = min_rate
        self._on_first_read = on_first_read
        self._window_start = time.monotonic()
        self._window_bytes = 0
        self.done = False

    def readable(self) -> bool:
        return True

    def leftover(self) -> bytes:
        return bytes(self._held)

    def discard(self, limit: int) -> bool:
        """Read and drop what the app left of the body, up to ``limit`` bytes; True if the
        body is then read to its end (the connection can serve another request)."""
        if self._on_first_read is not None:
            return False  # the client waits for "100 Continue" before sending it: never asked
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
        # The socket's timeout ends with the rate window, so a body that stalls is
        # judged when its window ends, not only when its next bytes arrive.
        if not self._min_rate:  # MIN_UPLOAD_RATE 0: only the socket's own timeout
            count = self._sock.recv_into(buffer, limit)
            if not count:
                raise ConnectionError("the request body broke off")
            return count
        now = time.monotonic()
        if now - self._window_start >= self._window:
            self._check_rate(now)
        saved = self._sock.gettimeout()
        self._sock.settimeout(max(self._window_start + self._window - now, 0.01))
        try:
            count = self._sock.recv_into(buffer, limit)
        except TimeoutError:
            self._check_rate(time.monotonic())
            return self._recv(buffer, limit)
        finally:
            self._sock.settimeout(saved)
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


class ChunkedBody(Body):
    """A chunked body: chunk data goes straight to the caller, framing is parsed here."""

    def __init__(self, sock, held: bytes, min_rate: float, on_first_read=None, **kw):
        super().__init__(sock, held, min_rate, on_first_read, **kw)
        self._left = 0
        self._started = False

    def _line(self) -> bytes:
        while (end := self._held.find(b"\r\n")) < 0:
            if len(self._held) > MAX_CHUNK_LINE:
                raise ValueError("chunked body: a framing line is too long")
            if self._on_first_read is not None:
                self._on_first_read()
                self._on_first_read = None
            more = bytearray(64 * 1024)
            count = self._recv(memoryview(more), len(more))
            self._held += more[:count]
        line = bytes(self._held[:end])
        del self._held[: end + 2]
        return line

    def _next_chunk(self) -> None:
        if self._started and self._line() != b"":
            raise ValueError("chunked body: chunk data is not followed by CRLF")
        self._started = True
        size_field = self._line().split(b";", 1)[0].strip()
        if not size_field or not all(c in b"0123456789abcdefABCDEF" for c in size_field):
            raise ValueError("chunked body: bad chunk size")
        size = int(size_field, 16)
        if size == 0:
            for _ in range(MAX_TRAILERS + 1):
                if not self._line():
                    break
            else:
                raise ValueError("chunked body: too many trailer lines")
            self.done = True
        self._left = size

    def readinto(self, buffer) -> int:
        if not self.done and not self._left:
            self._next_chunk()
        if self.done:
            return 0
        count = self._take(memoryview(buffer).cast("B"), min(len(buffer), self._left))
        self._left -= count
        return count


class _Response:
    """What ``start_response`` was given, and whether the head has gone out."""

    def __init__(self):
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.head_sent = False
        self.chunked = False
        self.length: int | None = None
        self.sent = 0


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def simple_response(status: int, message: str, *, close: bool = True) -> bytes:
    """A complete JSON error response in the services' envelope (for the server's own
    refusals: a bad head, a full server)."""
    import json

    kind = "invalid_request_error" if status < 500 else "server_error"
    body = json.dumps({"error": {"message": message, "type": kind}}).encode()
    lines = [
        f"HTTP/1.1 {status} {_reason(status)}",
        f"Server: {SERVER_NAME}",
        f"Date: {formatdate(usegmt=True)}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def build_environ(head: Head, body, server: tuple[str, int], peer) -> dict:
    path, _, query = head.target.partition("?")
    if path.startswith(("http://", "https://")):  # absolute form
        path = "/" + path.split("/", 3)[3] if path.count("/") >= 3 else "/"
    from urllib.parse import unquote

    environ = {
        "REQUEST_METHOD": head.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote(path, "latin-1"),
        "QUERY_STRING": query,
        "RAW_URI": head.target,
        "REQUEST_URI": head.target,
        "SERVER_NAME": server[0],
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": head.version,
        "REMOTE_ADDR": peer[0] if isinstance(peer, tuple) else "",
        "REMOTE_PORT": str(peer[1]) if isinstance(peer, tuple) else "",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": body,
        "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    if head.content_length is not None:
        environ["CONTENT_LENGTH"] = str(head.content_length)
    for name, value in head.headers:
        if name == "content-type":
            environ["CONTENT_TYPE"] = value
            continue
        if name == "content-length" or "_" in name:  # no header may pose as another
            continue
        key = "HTTP_" + name.upper().replace("-", "_")
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


def run_wsgi(app, sock: socket.socket, head: Head, body, environ: dict, keep_alive: bool) -> bool:
    """Run ``app`` for one request and send its response on ``sock`` (blocking, with the
    socket's timeout); True if the connection can serve another request. Raises
    OSError when the client is gone (the app's iterable is closed first)."""
    response = _Response()

    def start_response(status, headers, exc_info=None):
        if exc_info is not None and response.head_sent:
            raise exc_info[1].with_traceback(exc_info[2])
        response.status, response.headers = status, list(headers)
        return write

    def send_head(first: bytes) -> None:
        nonlocal keep_alive
        code = int(response.status.split(" ", 1)[0])
        names = {name.lower() for name, _ in response.headers}
        lines = [f"HTTP/1.1 {response.status}"]
        if "server" not in names:
            lines.append(f"Server: {SERVER_NAME}")
        if "date" not in names:
            lines.append(f"Date: {formatdate(usegmt=True)}")
        for name, value in response.headers:
            if name.lower() == "content-length":
                response.length = int(value)
            if name.lower() in ("connection", "transfer-encoding"):
                continue  # hop-by-hop: this server decides
            lines.append(f"{name}: {value}")
        no_body = head.method == "HEAD" or code in (204, 304) or code < 200
        if not no_body and response.length is None:
            if head.version == "HTTP/1.1":
                response.chunked = True
                lines.append("Transfer-Encoding: chunked")
            else:
                keep_alive = False
        if keep_alive and not body.done and not body.discard(DISCARD_LIMIT):
            keep_alive = False  # the app left much of the body unread: close rather than read
        if not keep_alive:
            lines.append("Connection: close")
        elif head.version == "HTTP/1.0":
            lines.append("Connection: keep-alive")
        response.head_sent = True
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        sock.sendall(data + _frame(first, response) if first and not no_body else data)

    def write(data: bytes) -> None:
        if not response.head_sent:
            send_head(data)
        elif data:
            sock.sendall(_frame(data, response))
        response.sent += len(data)

    try:
        result = app(environ, start_response)
    except Exception:
        logger.exception("the app failed before answering %s %s", head.method, head.target)
        if not response.head_sent:
            sock.sendall(simple_response(500, "internal error"))
        return False
    try:
        for data in result:
            if data:
                write(data)
        if not response.head_sent:
            send_head(b"")
        if response.chunked:
            sock.sendall(b"0\r\n\r\n")
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    if response.length is not None and response.sent != response.length:
        return False
    return keep_alive


def _frame(data: bytes, response: _Response) -> bytes:
    if not response.chunked:
        return data
    return b"%x\r\n%s\r\n" % (len(data), data)
