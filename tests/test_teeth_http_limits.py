"""The front server's documented limits, each at exactly the limit and one past it, over a
real socket to the real worker app (so they hold whichever parser reads the bytes):

- at most 100 header lines (``MAX_HEADERS``), else ``431``;
- a head of at most 64 KiB (``MAX_HEAD_BYTES``: the request line and header lines, not
  counting the CRLF CRLF that ends them), else ``431``;
- a chunk-size line (with its extensions) or a trailer line of at most 8190 bytes
  (``MAX_CHUNK_LINE``, without its CRLF), else ``400``;
- at most 100 trailer lines (``MAX_TRAILERS``), else ``400``.

A refused upload leaves no file; the connection's server keeps serving others.
"""

from __future__ import annotations

import socket

import pytest
import requests

from inference_worker.app import create_app
from inference_worker.config import WorkerSettings
from model_swap.serving import FrontThread
from model_swap.tiny_models import write_tiny_model
from tests.conftest import temp_files

MAX_HEADERS = 100
MAX_HEAD_BYTES = 64 * 1024
MAX_CHUNK_LINE = 8190
MAX_TRAILERS = 100


@pytest.fixture(scope="module")
def front(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("limits")
    cache = tmp / "cache"
    app = create_app(WorkerSettings(worker_host="127.0.0.1", worker_port=0, model_cache_dir=cache))
    model = write_tiny_model(tmp / "m.gguf").read_bytes()
    with FrontThread(app) as server:
        yield server, cache, model


def exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` on a new connection; the response's head (or b"" if it was closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        while b"\r\n\r\n" not in answer:
            try:
                more = sock.recv(65536)
            except ConnectionResetError:
                break
            if not more:
                break
            answer += more
        return answer


def status(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:100]
    return int(answer.split(b" ", 2)[1])


def head_with_lines(count: int) -> bytes:
    """A GET /health head with ``count`` header lines (Host among them)."""
    lines = [b"GET /health HTTP/1.1", b"Host: x"]
    lines += [b"X-Filler-%d: 1" % i for i in range(count - 1)]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def head_of_size(size: int) -> bytes:
    """A GET /health head whose request line and headers are ``size`` bytes (without the
    CRLF CRLF that ends them), in 8 header lines."""
    start = b"GET /health HTTP/1.1\r\nHost: x"
    names = [b"\r\nX-Pad-%d: " % i for i in range(6)]
    room = size - len(start) - sum(len(n) for n in names)
    pieces = [room // 6 + (1 if i < room % 6 else 0) for i in range(6)]
    head = start + b"".join(n + b"a" * p for n, p in zip(names, pieces, strict=True))
    assert len(head) == size
    return head + b"\r\n\r\n"


@pytest.mark.parametrize(("lines", "expected"), [(MAX_HEADERS, 200), (MAX_HEADERS + 1, 431)])
def test_header_lines_at_the_limit_and_one_past(front, lines, expected):
    server, _, _ = front
    assert status(exchange(server.port, head_with_lines(lines))) == expected
    assert requests.get(f"{server.url}/health", timeout=5).status_code == 200


@pytest.mark.parametrize(("size", "expected"), [(MAX_HEAD_BYTES, 200), (MAX_HEAD_BYTES + 1, 431)])
def test_head_bytes_at_the_limit_and_one_past(front, size, expected):
    server, _, _ = front
    assert status(exchange(server.port, head_of_size(size))) == expected
    assert requests.get(f"{server.url}/health", timeout=5).status_code == 200


def chunked_upload(name: str, data: bytes, size_line_length: int = 0, trailers=()) -> bytes:
    """POST /cache_model with ``data`` in one chunk whose size line is padded with a chunk
    extension to ``size_line_length`` bytes, then ``trailers`` (lines) after the last chunk."""
    size_line = b"%x" % len(data)
    if size_line_length:
        size_line += b";x=" + b"a" * (size_line_length - len(size_line) - 3)
        assert len(size_line) == size_line_length
    return (
        b"POST /cache_model HTTP/1.1\r\nHost: localhost\r\nX-Model-Name: " + name.encode() + b"\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        + size_line
        + b"\r\n"
        + data
        + b"\r\n0\r\n"
        + b"".join(line + b"\r\n" for line in trailers)
        + b"\r\n"
    )


def check_upload(front, name: str, request: bytes, expected: int) -> None:
    server, cache, _ = front
    assert status(exchange(server.port, request)) == expected
    assert (cache / name).exists() == (expected == 200)
    assert not temp_files(cache)


@pytest.mark.parametrize(("length", "expected"), [(MAX_CHUNK_LINE, 200), (MAX_CHUNK_LINE + 1, 400)])
def test_chunk_size_line_at_the_limit_and_one_past(front, length, expected):
    name = f"size-line-{length}.gguf"
    check_upload(front, name, chunked_upload(name, front[2], size_line_length=length), expected)


@pytest.mark.parametrize(("length", "expected"), [(MAX_CHUNK_LINE, 200), (MAX_CHUNK_LINE + 1, 400)])
def test_trailer_line_at_the_limit_and_one_past(front, length, expected):
    name = f"trailer-line-{length}.gguf"
    trailer = b"X-Check: " + b"a" * (length - len(b"X-Check: "))
    check_upload(front, name, chunked_upload(name, front[2], trailers=[trailer]), expected)


@pytest.mark.parametrize(("count", "expected"), [(MAX_TRAILERS, 200), (MAX_TRAILERS + 1, 400)])
def test_trailer_lines_at_the_limit_and_one_past(front, count, expected):
    name = f"trailers-{count}.gguf"
    trailers = [b"X-Trailer-%d: 1" % i for i in range(count)]
    check_upload(front, name, chunked_upload(name, front[2], trailers=trailers), expected)
