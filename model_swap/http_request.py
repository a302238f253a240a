"""One HTTP/1.1 request on a connection of the front server (model_swap/http_front.py).

Owns the parts of HTTP that do not depend on how connections are watched:
running a WSGI app for one request and writing its response (``run_wsgi``):
each chunk the app yields is sent at once (a token stream is one chunk per
token), chunked transfer encoding when the app gives no length. Request heads
are parsed by llhttp (model_swap/http_parse.py), bodies are
model_swap/http_body.py, and responses are sent through a ``Sender``
(model_swap/http_send.py: STREAM_WRITE_TIMEOUT and MIN_DOWNLOAD_RATE).
"""

from __future__ import annotations

import logging
import sys
from email.utils import formatdate

from model_swap.http_parse import BadHead, Head
from model_swap.http_send import Sender

__all__ = ["BadHead", "Head", "build_environ", "probe_response", "run_wsgi", "simple_response"]

logger = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024  # request line and headers together
SERVER_NAME = "model-swap"
# A body the app left unread is read and dropped up to this size to keep the connection.
DISCARD_LIMIT = 64 * 1024


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


def simple_response(
    status: int, message: str, *, close: bool = True, extra: tuple[str, ...] = ()
) -> bytes:
    """A complete JSON error response in the services' envelope (for the server's own
    refusals: a bad head, a full server); ``extra`` header lines are added."""
    import json

    kind = "invalid_request_error" if status < 500 else "server_error"
    body = json.dumps({"error": {"message": message, "type": kind}}).encode()
    return _json_head(status, len(body), extra, close) + body


def probe_response(status: int, payload: dict, keep_alive: bool, head_only: bool = False) -> bytes:
    """An answer the front server's loop sends itself (``GET /health``, ``GET /ready``):
    ``payload`` as JSON, the way the services' own routes give it (``{"ok":true}``)."""
    import json

    body = json.dumps(payload, separators=(",", ":")).encode() + b"\n"
    head = _json_head(status, len(body), (), not keep_alive)
    return head if head_only else head + body


def _json_head(status: int, length: int, extra, close: bool) -> bytes:
    """The head of a JSON response the front server writes itself."""
    lines = [
        f"HTTP/1.1 {status} {_reason(status)}",
        f"Server: {SERVER_NAME}",
        f"Date: {formatdate(usegmt=True)}",
        "Content-Type: application/json",
        f"Content-Length: {length}",
        *extra,
    ]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


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


def run_wsgi(app, sock: Sender, head: Head, body, environ: dict, keep_alive: bool) -> bool:
    """Run ``app`` for one request and send its response with ``sock`` (blocking: see
    Sender); True if the connection can serve another request. Raises OSError when
    the client is gone or too slow (the app's iterable is closed first)."""
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
