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

import io
import json
import logging
import re
import socket
import sys
import threading

import pytest
import requests

from inference_worker.app import create_app
from inference_worker.config import WorkerSettings
from model_swap import http_request
from model_swap.http_body import ChunkedBody, MalformedBody, SizedBody, SlowUpload
from model_swap.http_parse import Head, RequestParser
from model_swap.serving import FrontThread
from model_swap.tiny_models import write_tiny_model
from tests.conftest import FakeClock, temp_files

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


# -- a body read from a socket pair (no server): what the app gets, and what is left ---------


@pytest.fixture
def pair():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        yield ours, theirs


def read_all(body, size: int = 7) -> bytes:
    out = bytearray()
    buffer = bytearray(size)
    while count := body.readinto(buffer):
        out += buffer[:count]
    return bytes(out)


def test_a_sized_body_reads_what_was_held_then_the_socket_and_stops_at_its_length(pair):
    ours, theirs = pair
    theirs.sendall(b"world!GET / HTTP/1.1\r\n")
    body = SizedBody(ours, b"hello ", 12, min_rate=0)
    assert not body.done
    assert read_all(body) == b"hello world!"
    assert body.done and body.readinto(bytearray(4)) == 0
    assert ours.recv(100) == b"GET / HTTP/1.1\r\n"  # the next request was not read


def test_an_empty_sized_body_is_done_at_once(pair):
    body = SizedBody(pair[0], b"", 0, min_rate=0)
    assert body.done and read_all(body) == b"" and body.discard(0)


@pytest.mark.parametrize("min_rate", [0, 1.0])
def test_a_body_that_breaks_off_is_a_connection_error(pair, min_rate):
    ours, theirs = pair
    theirs.sendall(b"abc")
    theirs.shutdown(socket.SHUT_WR)
    body = SizedBody(ours, b"", 10, min_rate=min_rate)
    with pytest.raises(ConnectionError, match="^the request body broke off$"):
        read_all(body)
    assert not body.done


def test_a_body_slower_than_min_upload_rate_is_cut_when_its_window_ends(pair):
    ours, theirs = pair
    theirs.sendall(b"ab")  # 2 bytes in a 0.2 s window: 10 bytes/s, below 1000
    body = SizedBody(ours, b"", 100, min_rate=1000, window=0.2)
    with pytest.raises(SlowUpload) as err:
        read_all(body)
    assert "below MIN_UPLOAD_RATE (1000 bytes/s)" in str(err.value)
    rate = re.match(r"request body arrived at (\d+) bytes/s over \d+ s", str(err.value))
    assert rate and 1 <= int(rate.group(1)) <= 10  # 2 bytes over at least 0.2 s


def test_a_body_at_its_rate_is_read_across_windows(pair):
    ours, theirs = pair
    body = SizedBody(ours, b"", 60, min_rate=1, window=0.2)

    def drip():  # 60 bytes over about 0.6 s: three windows, each with bytes in it
        for _ in range(60):
            theirs.sendall(b"x")
            threading.Event().wait(0.01)

    sender = threading.Thread(target=drip)
    sender.start()
    try:
        assert read_all(body) == b"x" * 60
    finally:
        sender.join()


def test_each_rate_window_is_judged_on_its_own_bytes_at_exactly_the_rate(pair):
    ours, theirs = pair
    clock = FakeClock()
    body = SizedBody(ours, b"", 1000, min_rate=10, window=10, clock=clock)
    buffer = bytearray(1000)
    theirs.sendall(b"x" * 100)
    assert body.readinto(memoryview(buffer)[:60]) == 60
    assert body.readinto(buffer) == 40  # 100 bytes in the first 10 s: exactly 10 bytes/s
    clock.advance(10)
    theirs.sendall(b"y" * 99)
    assert body.readinto(buffer) == 99  # the first window passes; the second starts empty
    clock.advance(10)
    theirs.sendall(b"z")
    with pytest.raises(SlowUpload, match=r"over 10 s, below MIN_UPLOAD_RATE \(10 bytes/s\)"):
        body.readinto(buffer)  # 99 bytes in the second window: one short of 10 bytes/s


def continue_sender(theirs, payload: bytes):
    """An ``on_first_read`` that sends ``payload`` (the client's body after a 100 Continue),
    and the list of its calls."""
    asked = []

    def send_continue():
        asked.append(1)
        theirs.sendall(payload)

    return asked, send_continue


def test_a_chunked_body_asks_for_the_body_once_however_many_reads_its_framing_takes(pair):
    ours, theirs = pair
    asked, send_continue = continue_sender(theirs, b"5\r\nhello\r\n")
    ours.settimeout(2)  # a body never asked for would wait here, not for the test's timeout
    body = chunked_body(ours, b"", on_first_read=send_continue)
    assert not body.discard(100)  # never asked for: the connection cannot go on
    assert body.readinto(bytearray(10)) == 5 and asked == [1]
    theirs.sendall(b"0\r\n\r\n")  # the rest, read by more framing reads
    assert body.readinto(bytearray(10)) == 0 and body.done and asked == [1]


def test_a_chunked_body_below_min_upload_rate_is_cut(pair):
    ours, theirs = pair
    clock = FakeClock()
    body = chunked_body(ours, b"", min_rate=10, window=10, clock=clock)
    theirs.sendall(b"63\r\n" + b"x" * 95)  # 99 bytes in 10 s, framing counted: one short
    assert read_all_available(body, 95) == b"x" * 95
    clock.advance(10)
    theirs.sendall(b"x" * 4 + b"\r\n0\r\n\r\n")
    with pytest.raises(SlowUpload, match=r"below MIN_UPLOAD_RATE \(10 bytes/s\)"):
        body.readinto(bytearray(10))


def read_all_available(body, count: int) -> bytes:
    out = bytearray()
    while len(out) < count:
        buffer = bytearray(count - len(out))
        out += buffer[: body.readinto(buffer)]
    return bytes(out)


def test_a_timed_read_gives_the_socket_its_own_timeout_back(pair):
    ours, theirs = pair
    ours.settimeout(5.0)
    theirs.sendall(b"abc")
    body = SizedBody(ours, b"", 3, min_rate=1, window=10)  # reads bounded by the window
    assert read_all(body) == b"abc"
    assert ours.gettimeout() == 5.0


def test_the_first_read_past_the_held_bytes_asks_for_the_body_once(pair):
    ours, theirs = pair
    asked, send_continue = continue_sender(theirs, b"def")
    body = SizedBody(ours, b"abc", 6, min_rate=0, on_first_read=send_continue)
    assert not body.discard(100)  # never asked for: the connection cannot go on
    assert read_all(body, 2) == b"abcdef" and asked == [1]


def test_a_body_is_a_readable_stream(pair):
    ours, theirs = pair
    theirs.sendall(b"def")
    body = SizedBody(ours, b"abc", 6, min_rate=0)
    assert body.readable()
    assert io.BufferedReader(body).read() == b"abcdef"


def test_discard_reads_a_rest_of_several_reads_and_not_a_broken_one(pair):
    ours, theirs = pair
    theirs.sendall(b"z" * 40_000)  # more than one read of the scratch buffer
    body = SizedBody(ours, b"", 40_000, min_rate=0)
    assert body.discard(64 * 1024) and body.done
    theirs.sendall(b"abc")
    theirs.shutdown(socket.SHUT_WR)
    broken = SizedBody(ours, b"", 10, min_rate=0)
    assert not broken.discard(64 * 1024) and not broken.done


def test_discard_reads_the_rest_within_its_limit(pair):
    ours, theirs = pair
    theirs.sendall(b"x" * 1000)
    body = SizedBody(ours, b"", 1000, min_rate=0)
    assert body.readinto(bytearray(10)) == 10
    assert body.discard(64 * 1024) and body.done
    big = SizedBody(ours, b"", 10**9, min_rate=0)
    theirs.sendall(b"y" * 200_000)
    assert not big.discard(40_000)  # far more than the limit: the connection closes instead


def chunked_parts(*chunks: bytes, trailers=(), extension=b"") -> bytes:
    out = b"".join(b"%x%s\r\n%s\r\n" % (len(c), extension, c) for c in chunks)
    return out + b"0\r\n" + b"".join(t + b"\r\n" for t in trailers) + b"\r\n"


def chunked_body(sock, held: bytes, min_rate: float = 0, **kw) -> ChunkedBody:
    parser = RequestParser()
    head = parser.feed_head(
        b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", True
    )
    assert head.chunked
    return ChunkedBody(sock, held, min_rate, parser=parser, **kw)


@pytest.mark.parametrize("held", [True, False], ids=["in-one-read", "from-the-socket"])
def test_a_chunk_of_size_zero_ends_the_body(pair, held):
    ours, theirs = pair
    data = chunked_parts(b"hello ", b"", b"wor", b"ld", trailers=[b"X-T: 1"], extension=b";e=1")
    following = b"GET /next HTTP/1.1\r\n\r\n"
    if not held:
        theirs.sendall(data + following)
    body = chunked_body(ours, data + following if held else b"")
    # a chunk of size 0 ends the body: only the chunks before it count
    assert read_all(body, 4) == b"hello "
    assert body.done and not body.broken


def test_chunks_then_trailers_then_what_follows(pair):
    ours, _ = pair
    data = chunked_parts(b"hello ", b"world", trailers=[b"X-A: 1", b"X-B: 2"], extension=b";e=1")
    body = chunked_body(ours, data + b"NEXT")
    assert read_all(body, 3) == b"hello world"
    assert body.done and body.leftover() == b"NEXT" and not body.broken


@pytest.mark.parametrize("held", ["all", "none", "the line"])
@pytest.mark.parametrize(("extra", "ok"), [(0, True), (1, False)])
def test_a_framing_line_at_max_chunk_line_and_one_past(pair, held, extra, ok):
    ours, theirs = pair
    size_line = b"4;" + b"e" * (8190 - 2 + extra)  # 8190 bytes, or 8191
    data = size_line + b"\r\nGGUF\r\n0\r\n\r\n"
    # held with the head: all of it, nothing, or the line without its CRLF (the rest later)
    kept = {"all": data, "none": b"", "the line": size_line}[held]
    theirs.sendall(data[len(kept) :])
    body = chunked_body(ours, kept)
    if ok:
        assert read_all(body) == b"GGUF" and body.done
        return
    with pytest.raises(MalformedBody) as err:
        read_all(body)
    assert err.value.description == "chunked body: a framing line is too long"
    assert body.broken and not body.discard(10**6)


@pytest.mark.parametrize("broken", [b"zz\r\nGGUF\r\n0\r\n\r\n", b"4\r\nGGUFxx0\r\n\r\n"])
def test_broken_chunked_framing_is_a_malformed_body(pair, broken):
    body = chunked_body(pair[0], broken)
    with pytest.raises(MalformedBody) as err:
        read_all(body)
    assert isinstance(err.value, ValueError) and err.value.code == 400
    assert body.broken and not body.done


# -- the server's own answers and the WSGI environ ---------------------------------------------


def parse_answer(data: bytes) -> tuple[str, dict, bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    first, *lines = head.decode("latin-1").split("\r\n")
    return first, dict(line.split(": ", 1) for line in lines), body


def test_simple_responses_carry_the_envelope_and_close():
    first, headers, body = parse_answer(http_request.simple_response(431, "too big"))
    assert first == "HTTP/1.1 431 Request Header Fields Too Large"
    assert json.loads(body) == {"error": {"message": "too big", "type": "invalid_request_error"}}
    assert headers["Content-Length"] == str(len(body)) and headers["Connection"] == "close"
    assert headers["Server"] == "model-swap" and headers["Content-Type"] == "application/json"
    assert headers["Date"].endswith(" GMT")
    first, headers, body = parse_answer(
        http_request.simple_response(503, "full", close=False, extra=("Retry-After: 1",))
    )
    assert first == "HTTP/1.1 503 Service Unavailable" and "Connection" not in headers
    assert headers["Retry-After"] == "1"
    assert json.loads(body)["error"]["type"] == "server_error"
    assert json.loads(parse_answer(http_request.simple_response(499, "x"))[2])["error"]["type"] == (
        "invalid_request_error"
    )
    assert json.loads(parse_answer(http_request.simple_response(500, "x"))[2])["error"]["type"] == (
        "server_error"
    )
    assert parse_answer(http_request.simple_response(599, "x"))[0] == "HTTP/1.1 599 Unknown"


def test_probe_responses():
    first, headers, body = parse_answer(http_request.probe_response(200, {"ok": True}, True))
    assert first == "HTTP/1.1 200 OK" and body == b'{"ok":true}\n'
    two = parse_answer(http_request.probe_response(200, {"ok": True, "n": 1}, True))[2]
    assert two == b'{"ok":true,"n":1}\n'
    assert headers["Content-Length"] == "12" and "Connection" not in headers
    data = http_request.probe_response(503, {"ok": False}, False, head_only=True)
    first, headers, body = parse_answer(data)
    assert first == "HTTP/1.1 503 Service Unavailable" and body == b""
    assert headers["Content-Length"] == "13" and headers["Connection"] == "close"


def test_the_environ_of_a_request():
    head = Head(
        "POST",
        "http://example.test/v1/a%20b?x=1&y=2",
        "HTTP/1.1",
        [
            ("content-type", "application/json"),
            ("content-length", "5"),
            ("x-model-name", "a"),
            ("x-model-name", "b"),
            ("x_forwarded_for", "evil"),
            ("authorization", "Bearer k"),
        ],
        content_length=5,
    )
    env = http_request.build_environ(head, "BODY", ("127.0.0.1", 8080), ("10.0.0.2", 5555))
    assert env["REQUEST_METHOD"] == "POST" and env["PATH_INFO"] == "/v1/a b"
    assert env["QUERY_STRING"] == "x=1&y=2" and env["RAW_URI"] == head.target
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("127.0.0.1", "8080")
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("10.0.0.2", "5555")
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1" and env["wsgi.input"] == "BODY"
    assert env["CONTENT_TYPE"] == "application/json" and env["CONTENT_LENGTH"] == "5"
    assert env["HTTP_X_MODEL_NAME"] == "a,b"  # repeated headers joined
    assert env["HTTP_AUTHORIZATION"] == "Bearer k"
    assert "HTTP_X_FORWARDED_FOR" not in env and "HTTP_CONTENT_TYPE" not in env
    assert "HTTP_CONTENT_LENGTH" not in env
    assert env["SCRIPT_NAME"] == "" and env["REQUEST_URI"] == head.target
    assert env["wsgi.version"] == (1, 0) and env["wsgi.url_scheme"] == "http"
    assert env["wsgi.input_terminated"] and env["wsgi.multithread"]
    assert env["wsgi.errors"] is sys.stderr
    assert not env["wsgi.multiprocess"] and not env["wsgi.run_once"]
    for target, path in [
        ("https://example.test/x%E9?q", "/x\xe9"),  # percent-escapes as Latin-1 (PEP 3333)
        ("http://example.test/v1", "/v1"),
        ("http://example.test/", "/"),
    ]:
        env = http_request.build_environ(Head("GET", target, "HTTP/1.1", []), None, ("h", 1), None)
        assert env["PATH_INFO"] == path
    short = Head("GET", "http://example.test", "HTTP/1.0", [])
    env = http_request.build_environ(short, None, ("h", 1), "unix")
    assert env["PATH_INFO"] == "/" and "CONTENT_LENGTH" not in env
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("", "")
    assert (
        http_request.build_environ(Head("GET", "/p", "HTTP/1.1", []), None, ("h", 1), None)[
            "PATH_INFO"
        ]
        == "/p"
    )


class Collect:
    """What ``run_wsgi`` sends (a ``Sender``'s one method)."""

    def __init__(self):
        self.data = b""

    def sendall(self, data: bytes) -> None:
        self.data += data


class Done:
    done = True

    def discard(self, limit: int) -> bool:
        return True


def run(app, method="GET", version="HTTP/1.1", keep_alive=True, body=None):
    head = Head(method, "/", version, [])
    sock = Collect()
    again = http_request.run_wsgi(app, sock, head, body or Done(), {}, keep_alive)
    return again, sock.data


def app_of(status, headers, chunks):
    def app(environ, start_response):
        start_response(status, headers)
        return iter(chunks)

    return app


def test_a_response_without_a_length_is_chunked_one_chunk_per_piece():
    again, data = run(app_of("200 OK", [("X-A", "1"), ("Connection", "x")], [b"ab", b"", b"c"]))
    first, headers, body = parse_answer(data)
    assert again and first == "HTTP/1.1 200 OK"
    assert headers["Transfer-Encoding"] == "chunked" and "Connection" not in headers
    assert headers["X-A"] == "1" and headers["Server"] == "model-swap"
    assert body == b"2\r\nab\r\n1\r\nc\r\n0\r\n\r\n"


def test_a_response_with_its_length_is_sent_as_is():
    app = app_of("200 OK", [("Content-Length", "3"), ("Server", "app")], [b"abc"])
    again, data = run(app)
    first, headers, body = parse_answer(data)
    assert again and body == b"abc" and "Transfer-Encoding" not in headers
    assert headers["Server"] == "app"
    short = app_of("200 OK", [("Content-Length", "5")], [b"abc"])
    assert run(short)[0] is False  # fewer bytes than announced: the connection closes


def test_http_1_0_without_a_length_closes_and_with_one_keeps_alive():
    again, data = run(app_of("200 OK", [], [b"abc"]), version="HTTP/1.0")
    first, headers, body = parse_answer(data)
    assert not again and headers["Connection"] == "close" and body == b"abc"
    again, data = run(app_of("200 OK", [("Content-Length", "3")], [b"abc"]), version="HTTP/1.0")
    assert again and parse_answer(data)[1]["Connection"] == "keep-alive"


@pytest.mark.parametrize(
    ("method", "status"),
    [("HEAD", "200 OK"), ("GET", "204 No Content"), ("GET", "304 Not Modified")],
)
def test_no_body_is_sent_for_head_204_and_304(method, status):
    again, data = run(app_of(status, [], [b"abc"]), method=method)
    first, headers, body = parse_answer(data)
    assert first == f"HTTP/1.1 {status}" and body == b""
    assert "Transfer-Encoding" not in headers


def test_an_app_that_fails_before_answering_is_a_500_and_the_connection_closes():
    def app(environ, start_response):
        raise RuntimeError("boom")

    again, data = run(app)
    first, headers, body = parse_answer(data)
    assert not again and first == "HTTP/1.1 500 Internal Server Error"
    assert json.loads(body)["error"]["message"] == "internal error"


def test_an_unread_body_past_the_discard_limit_closes_the_connection():
    class Unread:
        done = False

        def __init__(self, drained):
            self.drained = drained

        def discard(self, limit: int) -> bool:
            assert limit == http_request.DISCARD_LIMIT
            return self.drained

    again, data = run(app_of("200 OK", [("Content-Length", "0")], []), body=Unread(False))
    assert not again and parse_answer(data)[1]["Connection"] == "close"
    again, data = run(app_of("200 OK", [("Content-Length", "0")], []), body=Unread(True))
    assert again and "Connection" not in parse_answer(data)[1]
    again, data = run(app_of("200 OK", [("Content-Length", "0")], []), keep_alive=False)
    assert not again and parse_answer(data)[1]["Connection"] == "close"


def test_the_apps_iterable_is_closed():
    closed = []

    class Result(list):
        def close(self):
            closed.append(True)

    def app(environ, start_response):
        start_response("200 OK", [])
        return Result([b"a"])

    run(app)
    assert closed == [True]


def head_lines(data: bytes) -> list[str]:
    return data.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")[1:]


def test_the_apps_own_server_and_date_replace_ours_whatever_their_case():
    app = app_of("200 OK", [("server", "app"), ("DATE", "then"), ("Content-Length", "0")], [])
    lines = head_lines(run(app)[1])
    assert [line for line in lines if line.lower().startswith(("server:", "date:"))] == [
        "server: app",
        "DATE: then",
    ]
    lines = head_lines(run(app_of("200 OK", [("Content-Length", "0")], []))[1])
    assert lines[:1] == ["Server: model-swap"]
    assert re.fullmatch(r"Date: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", lines[1])


def test_hop_by_hop_headers_from_the_app_are_dropped_and_the_rest_kept_in_order():
    headers = [("X-A", "1"), ("Transfer-Encoding", "gzip"), ("X-B", "2"), ("Connection", "x")]
    lines = head_lines(run(app_of("200 OK", [*headers, ("X-C", "3")], [b"ab"]))[1])
    own = [line for line in lines if line.startswith("X-")]
    assert own == ["X-A: 1", "X-B: 2", "X-C: 3"]
    assert "Transfer-Encoding: chunked" in lines and "Transfer-Encoding: gzip" not in lines


def test_an_app_may_replace_its_status_with_an_error_until_the_head_is_sent():
    def app(environ, start_response):
        start_response("200 OK", [("X-A", "1")])
        try:
            raise ValueError("late")
        except ValueError:
            start_response("503 Service Unavailable", [("Content-Length", "0")], sys.exc_info())
        return []

    first, headers, _ = parse_answer(run(app)[1])
    assert first == "HTTP/1.1 503 Service Unavailable" and "X-A" not in headers


def test_a_length_sent_in_several_pieces_keeps_the_connection():
    app = app_of("200 OK", [("Content-Length", "3")], [b"a", b"", b"bc"])
    again, data = run(app)
    assert again and parse_answer(data)[2] == b"abc"


def test_an_empty_answer_without_a_length_is_one_last_chunk():
    again, data = run(app_of("200 OK", [], []))
    assert again and parse_answer(data)[2] == b"0\r\n\r\n"
    again, data = run(app_of("200 OK", [("Content-Length", "0")], []))
    assert again and data.endswith(b"\r\n\r\n") and parse_answer(data)[2] == b""


def test_an_app_that_fails_is_logged_with_its_request(caplog):
    def app(environ, start_response):
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, logger="model_swap.http_request"):
        run(app, method="DELETE")
    assert [r.getMessage() for r in caplog.records] == ["the app failed before answering DELETE /"]
