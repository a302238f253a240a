"""What the request parser costs: llhttp (httptools) against h11 and the hand-written parser.

The front server parses every request head on its event loop and a chunked
body's framing on a pool thread (model_swap/http_parse.py). This measures, in
one run, on this machine:

- a store hit's request head (POST /user_request, seven headers): microseconds
  per head with llhttp as the front server uses it, with h11 (the pure-Python
  alternative), and with the previous hand-written ``parse_head`` when
  ``--baseline`` names a checkout that has it (``git worktree add /tmp/base
  f7bc8f1``);
- a chunked upload of ``--mb`` MiB in 1 MiB chunks over a socket pair, read into
  a 1 MiB buffer: the reading thread's CPU seconds and MB/s, with ``ChunkedBody``
  (llhttp checks the framing, the data goes straight into the buffer), with h11
  (its data events are copies), and with the baseline's ``ChunkedBody``;
- a token stream's writes: microseconds per 40-byte chunk sent through ``Sender``
  (MIN_DOWNLOAD_RATE on) against a plain ``sendall``.

Medians of ``--repeats``; CPU time is the reading thread's own (``thread_time``),
which a busy machine disturbs less than wall time::

    uv run python benchmarks/parser.py --baseline /tmp/base
"""

from __future__ import annotations

import argparse
import importlib.util
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

import h11

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from model_swap.http_body import ChunkedBody  # noqa: E402
from model_swap.http_parse import RequestParser  # noqa: E402
from model_swap.http_send import Sender  # noqa: E402

HIT_HEAD = (
    b"POST /user_request HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: python-requests/2.32\r\n"
    b"Accept-Encoding: gzip, deflate\r\nAccept: */*\r\nConnection: keep-alive\r\n"
    b"Content-Type: application/json\r\nContent-Length: 58\r\n\r\n"
)
CHUNK = 1024 * 1024


def _load(tree: Path, module: str):
    """``module`` (model_swap.x) from another checkout, without touching this one's."""
    name = f"baseline_{module.replace('.', '_')}"
    path = tree / (module.replace(".", "/") + ".py")
    spec = importlib.util.spec_from_file_location(name, path)
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[name] = loaded
    spec.loader.exec_module(loaded)
    return loaded


def per_head_us(parse, count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        parse()
    return (time.perf_counter() - started) / count * 1e6


def llhttp_head():
    return RequestParser().feed_head(HIT_HEAD, True)


def h11_head():
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(HIT_HEAD)
    return conn.next_event()


def chunked_wire(mb: int) -> bytes:
    data = bytes(range(256)) * (CHUNK // 256)
    return (b"%x\r\n" % CHUNK + data + b"\r\n") * mb + b"0\r\n\r\n"


def read_chunked(make_reader, wire: bytes) -> tuple[float, float]:
    """(CPU seconds of the reading thread, MB/s wall) to read ``wire`` off a socket pair."""
    left, right = socket.socketpair()
    with left, right:
        sender = threading.Thread(target=left.sendall, args=(wire,), daemon=True)
        sender.start()
        cpu, wall = time.thread_time(), time.perf_counter()
        total = make_reader(right)
        cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
        sender.join()
    return cpu, total / wall / 1e6


def body_reader(body_class, with_parser: bool):
    def read(sock) -> int:
        buffer = memoryview(bytearray(CHUNK))
        kwargs = {}
        if with_parser:
            parser = RequestParser()
            parser.feed_head(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", True)
            kwargs["parser"] = parser
        body = body_class(sock, b"", 0, None, **kwargs)
        total = 0
        while count := body.readinto(buffer):
            total += count
        return total

    return read


def h11_reader(sock) -> int:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=CHUNK * 2)
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    conn.next_event()
    buffer = memoryview(bytearray(CHUNK))
    total = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            count = sock.recv_into(buffer)
            conn.receive_data(bytes(buffer[:count]))
        elif isinstance(event, h11.Data):
            total += len(event.data)
        elif isinstance(event, h11.EndOfMessage):
            return total


def per_write_us(use_sender: bool, count: int) -> float:
    left, right = socket.socketpair()
    stop = threading.Event()

    def drain():
        while not stop.is_set():
            if not right.recv(65536):
                return

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    with left, right:
        left.settimeout(10)
        send = Sender(left, 10, 1000.0).sendall if use_sender else left.sendall
        data = b"data: " + b"x" * 34
        started = time.perf_counter()
        for _ in range(count):
            send(data)
        elapsed = time.perf_counter() - started
        stop.set()
        left.shutdown(socket.SHUT_WR)
        reader.join(5)
    return elapsed / count * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, help="a checkout with the previous parser")
    parser.add_argument("--mb", type=int, default=256, help="MiB of chunked body per read")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--heads", type=int, default=20000)
    args = parser.parse_args(argv)

    heads = {"llhttp (httptools)": llhttp_head, "h11": h11_head}
    bodies = {
        "llhttp framing, data straight to the buffer": body_reader(ChunkedBody, True),
        "h11 (data events are copies)": h11_reader,
    }
    if args.baseline:
        old_request = _load(args.baseline, "model_swap.http_request")
        old_body = _load(args.baseline, "model_swap.http_body")
        old_head = HIT_HEAD[:-4]
        heads["hand-written (baseline)"] = lambda: old_request.parse_head(old_head)
        bodies["hand-written (baseline)"] = body_reader(old_body.ChunkedBody, False)

    print(f"request head of a store hit ({len(HIT_HEAD)} bytes), median of {args.repeats}:")
    for name, parse in heads.items():
        parse()  # it parses
        us = statistics.median(per_head_us(parse, args.heads) for _ in range(args.repeats))
        print(f"  {name}: {us:.1f} us per head")

    wire = chunked_wire(args.mb)
    print(f"chunked body, {args.mb} MiB in 1 MiB chunks over a socket pair:")
    for name, reader in bodies.items():
        runs = [read_chunked(reader, wire) for _ in range(args.repeats)]
        cpu = statistics.median(run[0] for run in runs)
        rate = statistics.median(run[1] for run in runs)
        print(f"  {name}: reader CPU {cpu:.3f} s, {rate:.0f} MB/s")

    print("a token stream's write of 40 bytes:")
    for name, flag in (("sendall", False), ("Sender (MIN_DOWNLOAD_RATE on)", True)):
        us = statistics.median(per_write_us(flag, 20000) for _ in range(args.repeats))
        print(f"  {name}: {us:.2f} us per write")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
