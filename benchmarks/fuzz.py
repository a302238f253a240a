"""Fuzzing both services' front server with hostile request bytes (Hypothesis).

The strategies (``request_bytes``) build request lines, header names and values
(Latin-1 and control bytes, huge, signed and non-ASCII numbers, duplicates),
Content-Length and Transfer-Encoding combinations, chunked bodies with bogus
sizes and extensions, pipelined requests and early closes. ``try_case`` sends
one input on a fresh connection, closes its writing side, and reads until the
server closes: every response must be a 4xx (or 501, 503, 505, or a 2xx/404 for
an input that happens to be valid), never a 500, and the server must close the
connection; ``still_serving`` then asks a fresh connection for the app's
``/healthz`` and the loop's ``/health``.

tests/test_fuzz_http.py runs a few seconds of this in the suite; this script runs
longer against a real worker and store (in this process, each served by the
front server on a free loopback port) and reports the cases tried::

    uv run python benchmarks/fuzz.py --cases 3000
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import re
import socket
import sys
import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from model_swap.http_front import FrontLimits  # noqa: E402
from model_swap.serving import FrontThread  # noqa: E402

METHODS = [b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"CONNECT", b"get", b"G\0T"]
TARGETS = [
    b"/",
    b"/health",
    b"/healthz",
    b"/ready",
    b"/status",
    b"/user_request",
    b"/infer",
    b"/cache_model",
    b"/v1/chat/completions",
    b"/metrics",
    b"*",
    b"http://x/status",
    b"/%zz",
    b"/a b",
]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.10", b"http/1.1", b""]
NUMBERS = [
    b"0",
    b"1",
    b"5",
    b"-1",
    b"+5",
    b" 5",
    b"\xb2",  # superscript two: str.isdigit() says yes, int() says no
    b"\xd9\xa3",
    b"1_0",
    b"0x10",
    b"1e3",
    b"9" * 30,
    b"9" * 5000,
    b"18446744073709551616",
    b"1,1",
    b"1, 2",
    b"",
]
HOSTILE_LENGTHS = [b"\xb2", b"9" * 5000, b"\xd9\xa3", b"+5", b"1_0", b"18446744073709551616"]
CODINGS = [b"chunked", b"Chunked", b"gzip, chunked", b"chunked, chunked", b"identity", b"gzip"]
OTHER_VALUES = [b"close", b"keep-alive", b"100-continue", b"application/json", b"x" * 9000]
NAMES = [
    b"Host",
    b"Content-Length",
    b"Transfer-Encoding",
    b"Connection",
    b"Expect",
    b"Content-Type",
    b"Authorization",
    b"X-Model-Name",
    b"Upgrade",
    b"Trailer",
]
CHUNK_SIZES = [b"-1", b"0x5", b"f" * 17, b"f" * 300, b"\xb2", b"", b"1 1", b"+1"]
VALID_STATUSES = {200, 201, 202, 204, 400, 401, 403, 404, 405, 409, 411, 413, 414, 415, 422}
VALID_STATUSES |= {431, 501, 503, 505}
FINAL = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


def mostly(common: st.SearchStrategy, rare: st.SearchStrategy) -> st.SearchStrategy:
    """``common`` about nine times in ten, else ``rare`` (hostile bytes)."""
    return st.integers(0, 9).flatmap(lambda n: rare if n == 0 else common)


TOKEN = st.binary(min_size=1, max_size=12).map(
    lambda b: bytes(c for c in b if 0x21 <= c < 0x7F and c not in b'():;<>@[]{}"/\\?=,') or b"X"
)
header_names = mostly(st.one_of(st.sampled_from(NAMES), TOKEN), st.binary(max_size=16))
header_values = mostly(
    st.one_of(st.sampled_from(NUMBERS), st.sampled_from(CODINGS), st.sampled_from(OTHER_VALUES)),
    st.binary(max_size=40),
)


@st.composite
def chunked_body(draw) -> bytes:
    parts = []
    for data in draw(st.lists(st.binary(min_size=1, max_size=40), max_size=4)):
        size = b"%x" % len(data) if draw(st.booleans()) else draw(st.sampled_from(CHUNK_SIZES))
        extension = draw(st.sampled_from([b"", b";a=b", b";" + b"e" * 9000, b";\0"]))
        parts.append(size + extension + b"\r\n" + data + b"\r\n")
    trailers = draw(st.lists(st.tuples(header_names, header_values), max_size=3))
    parts.append(b"0\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in trailers) + b"\r\n")
    return b"".join(parts)


@st.composite
def request_bytes(draw) -> bytes:
    """One request (perhaps several pipelined, perhaps cut short), as bytes on the wire."""
    if draw(st.booleans()):  # a well-formed head: only its framing may be hostile
        method = draw(st.sampled_from([b"GET", b"POST", b"PUT"]))
        target, version, eol = draw(st.sampled_from(TARGETS)), b"HTTP/1.1", b"\r\n"
        headers = [(b"Host", b"x")]
    else:
        method = draw(mostly(st.sampled_from([b"GET", b"POST"] * 3 + METHODS), st.binary()))
        target = draw(mostly(st.sampled_from(TARGETS), st.binary(max_size=24)))
        version = draw(mostly(st.sampled_from([b"HTTP/1.1"] * 6 + VERSIONS), st.binary()))
        eol = draw(st.sampled_from([b"\r\n"] * 6 + [b"\n", b"\r", b"\r\r\n"]))
        headers = draw(st.lists(st.tuples(header_names, header_values), max_size=5))
    if draw(st.booleans()):
        headers.append((b"Content-Type", b"application/json"))
        body_json = draw(
            st.sampled_from(
                [
                    b'{"prompt":"hi","model":"tiny-a.gguf","max_tokens":2}',
                    b"{}",
                    b"[",
                    b'{"model":1}',
                ]
            )
        )
    else:
        body_json = None
    framings = ["none", "length", "chunked", "both", "two lengths", "odd length", "odd coding"]
    framing = draw(st.sampled_from(framings))
    body = draw(st.one_of(st.binary(max_size=64), chunked_body()))
    if body_json is not None and framing != "chunked":
        body = body_json
    if framing in ("length", "both", "two lengths"):
        headers.append((b"Content-Length", b"%d" % len(body)))
    if framing == "two lengths":
        headers.append((b"Content-Length", b"%d" % (len(body) + 1)))
    if framing in ("chunked", "both"):
        headers.append((b"Transfer-Encoding", b"chunked"))
    if framing == "odd length":
        headers.append((b"Content-Length", draw(st.sampled_from(HOSTILE_LENGTHS))))
    if framing == "odd coding":
        headers.append((b"Transfer-Encoding", draw(st.sampled_from(CODINGS))))
    headers = draw(st.permutations(headers))
    line = method + b" " + target + b" " + version + eol
    head = line + b"".join(name + b": " + value + eol for name, value in headers) + eol
    data = head + body
    if draw(st.booleans()):
        data += FINAL  # pipelined after it
    if draw(st.integers(0, 4)) == 0:
        data = data[: draw(st.integers(0, len(data)))]  # the client gives up early
    return data


STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) ")


def try_case(port: int, data: bytes, timeout: float = 10.0) -> list[int]:
    """Send ``data`` on a fresh connection, close our side, read until the server closes;
    the statuses answered. AssertionError on a 500-class answer the input cannot
    justify, or a connection the server keeps open."""
    answer = b""
    closed = False
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):  # the server may close before reading it all
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        try:
            while chunk := sock.recv(65536):
                answer += chunk
            closed = True
        except TimeoutError:
            pass
        except OSError:  # reset: closed with our bytes unread
            closed = True
    statuses = [int(code) for code in STATUS.findall(answer)]
    bad = [code for code in statuses if code not in VALID_STATUSES]
    assert not bad, f"answered {bad} to {data[:300]!r}: {answer[:300]!r}"
    assert closed, f"the server kept the connection open after {data[:300]!r}"
    return statuses


def still_serving(port: int) -> None:
    """A fresh connection gets the app's /healthz and the loop's /health."""
    for path in (b"/healthz", b"/health"):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 "), (path, answer[:200])


@contextlib.contextmanager
def services(
    models_dir: Path,
    cache_dir: Path,
    limits: FrontLimits | None = None,
    store_settings: dict | None = None,
    **worker_settings,
):
    """A real worker (with ``worker_settings``) and store (with ``store_settings``) in this
    process, each behind the front server; by default with a short header timeout, so a
    head left unfinished costs a second, not ten."""
    from inference_worker.app import create_app as create_worker_app
    from inference_worker.config import WorkerSettings
    from model_store_server.app import create_app as create_store_app
    from model_store_server.config import StoreSettings

    limits = limits or FrontLimits(threads=8, header_timeout=1.0, io_timeout=10)
    started = []
    try:
        worker_app = create_worker_app(
            WorkerSettings(
                worker_host="127.0.0.1",
                worker_port=0,
                model_cache_dir=cache_dir,
                **worker_settings,
            )
        )
        worker = FrontThread(worker_app, limits).start()
        started.append((worker, worker_app))
        store_app = create_store_app(
            StoreSettings(
                models_dir=models_dir,
                worker_url=worker.url,
                store_host="127.0.0.1",
                store_port=0,
                transport="http",
                **(store_settings or {}),
            )
        )
        store = FrontThread(store_app, limits).start()
        started.append((store, store_app))
        yield {"store": store, "worker": worker}
    finally:
        for server, app in reversed(started):
            server.stop()
            stop = app.extensions.get("stop")
            if stop is not None:
                stop()


def fuzz(port: int, cases: int, seed: int | None, tally: collections.Counter) -> None:
    """Run ``cases`` Hypothesis cases against ``port``; AssertionError on a violation
    (shrunk to a small input)."""

    @settings(
        max_examples=cases,
        deadline=None,
        database=None,
        derandomize=seed is None,
        suppress_health_check=list(HealthCheck),
    )
    @given(data=request_bytes())
    def run(data: bytes) -> None:
        statuses = try_case(port, data)
        tally["cases"] += 1
        for code in statuses or ["closed"]:
            tally[code] += 1
        still_serving(port)

    if seed is not None:
        from hypothesis import seed as with_seed

        run = with_seed(seed)(run)
    run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=2000, help="Hypothesis cases per service")
    parser.add_argument("--seed", type=int, default=None, help="a seed (default: derandomized)")
    args = parser.parse_args(argv)
    from model_swap.tiny_models import write_tiny_models

    with tempfile.TemporaryDirectory() as workdir:
        models = Path(workdir) / "models"
        models.mkdir()
        write_tiny_models(models, count=2)
        with services(models, Path(workdir) / "cache") as running:
            failed = False
            for name, server in running.items():
                tally: collections.Counter = collections.Counter()
                started = time.monotonic()
                try:
                    fuzz(server.port, args.cases, args.seed, tally)
                    verdict = "no violation"
                except AssertionError as err:
                    failed, verdict = True, f"VIOLATION: {err}"
                seconds = time.monotonic() - started
                restarts = server.server.loop_restarts
                answers = ", ".join(f"{k}: {v}" for k, v in sorted(tally.items(), key=str))
                print(f"{name}: {tally['cases']} cases in {seconds:.0f} s; {verdict}")
                print(f"  answers ({answers}); loop restarts: {restarts}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
