"""Slow clients against the services: the front server against the previous gunicorn path.

For each server (``--candidates``, default ``front,gunicorn``: the production
path, model_swap/serving.py, and the previous one, model_swap/serving_gunicorn.py,
served by ``benchmarks/servers.py``) a real worker and store run in their own
processes in front of tiny models, and this measures in one run:

- hit latency: ``/user_request`` for a resident model, ``max_tokens`` 1, time to
  the first body byte, median of ``--requests``;
- push: a ``--push-mb`` MiB model POSTed to the worker's ``/cache_model`` the
  way the store pushes (a sized body sent with sendfile(2), verified with the
  default digest, blake3), median MB/s of ``--pushes``,
  against a raw loopback socket (``sendfile`` into a file) in the same run;
- slowloris: ``--store-slow`` connections to the store and ``--worker-slow`` to
  the worker, each sending a request head one header line every ``--interval``
  seconds and never finishing it (a connection the server closes is reopened,
  as an attacker would); meanwhile normal requests on fresh connections
  (the store: a hit; the worker: ``GET /status``), p50/p95 and how many were
  answered within ``--timeout`` seconds, against the same requests without attack;
- memory per idle connection: the serving process's RSS growth with the slow
  connections open, divided by their number.

Loopback only, on an otherwise idle machine (uvicorn needs the a2wsgi bridge; a
candidate whose package is missing fails)::

    uv run --with a2wsgi python benchmarks/slowloris.py --out benchmarks/SLOWLORIS.md
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import selectors
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.harness import raw_sendfile_seconds, rss_bytes, serving_pid  # noqa: E402
from benchmarks.servers import Pair, hit_ttfb_ms, push_mb_per_s  # noqa: E402
from model_swap.tiny_models import write_tiny_model  # noqa: E402

LOOPBACK = ("127.0.0.1", "::1", "localhost")


class Slowloris:
    """Hold ``count`` connections to ``host:port`` (loopback only), each dripping one header
    line every ``interval`` seconds of a request head it never finishes. Connections the
    server closes are counted and reopened. ``start`` returns once all were opened (or
    refused); ``stop`` closes them. One thread; not thread-safe otherwise."""

    def __init__(self, port: int, count: int, interval: float = 2.0, host: str = "127.0.0.1"):
        if host not in LOOPBACK:
            raise ValueError("Slowloris only targets loopback addresses")
        self.address = (host, port)
        self.count = count
        self.interval = interval
        self.closed_by_server = 0
        self.refused = 0
        self._socks: list[socket.socket] = []
        self._selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slowloris", daemon=True)
        self._lines = 0

    def held(self) -> int:
        return len(self._socks)

    def _open(self) -> None:
        try:
            sock = socket.create_connection(self.address, timeout=2)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        except OSError:
            self.refused += 1
            return
        sock.setblocking(False)
        self._socks.append(sock)
        self._selector.register(sock, selectors.EVENT_READ)

    def _drop(self, sock: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(sock)
        self._socks.remove(sock)
        sock.close()
        self.closed_by_server += 1

    def start(self) -> Slowloris:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < self.count + 256 <= hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.count + 256, hard))
        for _ in range(self.count):
            self._open()
        self._thread.start()
        return self

    def _run(self) -> None:
        next_drip = time.monotonic() + self.interval
        while not self._stop.is_set():
            # Anything the server sends (a 408, a 503, the end of the stream) ends it.
            for key, _ in self._selector.select(min(0.2, self.interval)):
                with contextlib.suppress(OSError):
                    key.fileobj.recv(4096)
                self._drop(key.fileobj)
            if time.monotonic() >= next_drip:
                next_drip += self.interval
                self._lines += 1
                for sock in list(self._socks):
                    try:
                        sock.send(b"X-Drip-%d: slow\r\n" % self._lines)
                    except OSError:
                        self._drop(sock)
                for _ in range(self.count - len(self._socks)):
                    self._open()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for sock in self._socks:
            sock.close()
        self._socks.clear()
        self._selector.close()


def normal_latencies(request, count: int) -> tuple[list[float], int]:
    """(latencies in ms of the answered requests, how many failed or timed out)."""
    samples, failed = [], 0
    for _ in range(count):
        started = time.perf_counter()
        try:
            request()
        except requests.RequestException:
            failed += 1
            continue
        samples.append((time.perf_counter() - started) * 1000)
    return samples, failed


def percentile(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def attack_figures(pair: Pair, service: str, slow: int, args) -> dict:
    """Normal requests' latency with and without ``slow`` dripping connections to ``service``."""
    timeout = args.timeout
    if service == "store":
        port, process = pair.store_port, pair.processes[1]

        def request():
            r = requests.post(
                f"{pair.store_url}/user_request",
                json={"prompt": "hello", "model": "tiny-a.gguf", "max_tokens": 1},
                timeout=timeout,
            )
            r.raise_for_status()
    else:
        port, process = pair.worker_port, pair.processes[0]

        def request():
            requests.get(f"{pair.worker_url}/status", timeout=timeout).raise_for_status()

    pid = serving_pid(process.pid)
    before, before_failed = normal_latencies(request, args.requests)
    rss_before = rss_bytes(pid)
    attack = Slowloris(port, slow, args.interval).start()
    try:
        time.sleep(args.interval * 1.5)  # every connection has dripped at least once
        rss_attack = rss_bytes(pid)
        held = attack.held()
        during, during_failed = normal_latencies(request, args.requests)
    finally:
        attack.stop()
    return {
        "slow": slow,
        "held": held,
        "closed": attack.closed_by_server,
        "refused": attack.refused,
        "before": before,
        "before_failed": before_failed,
        "during": during,
        "during_failed": during_failed,
        "kib_per_conn": max(rss_attack - rss_before, 0) / 1024 / max(held, 1),
    }


def run(args) -> tuple[list[str], dict]:
    lines: list[str] = []
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-slowloris-") as tmp:
        workdir = Path(tmp)
        models = workdir / "models"
        models.mkdir()
        write_tiny_model(models / "tiny-a.gguf")
        big = write_tiny_model(models / "tiny-push.gguf", size_mb=args.push_mb)
        raw = [big.stat().st_size / raw_sendfile_seconds(big, workdir) / 1e6 for _ in range(3)]
        results["raw"] = statistics.median(raw)
        print(f"raw loopback sendfile: {results['raw']:.0f} MB/s", flush=True)
        for candidate in args.candidates.split(","):
            pair = Pair(candidate, workdir, models)
            try:
                figures = {
                    "hit_ms": hit_ttfb_ms(pair, "tiny-a.gguf", args.requests),
                    "push": push_mb_per_s(pair, big, args.pushes)[0],
                    "store": attack_figures(pair, "store", args.store_slow, args),
                    "worker": attack_figures(pair, "worker", args.worker_slow, args),
                }
            finally:
                pair.stop()
            results[candidate] = figures
            print(f"{candidate}: {summary(figures)}", flush=True)
    lines += table(results, args)
    return lines, results


def summary(figures: dict) -> str:
    return f"hit {figures['hit_ms']:.2f} ms, push {figures['push']:.0f} MB/s, " + ", ".join(
        f"{service} under {figures[service]['slow']} slow: "
        f"p50 {percentile(figures[service]['during'], 0.5):.1f} ms, "
        f"{figures[service]['during_failed']} failed"
        for service in ("store", "worker")
    )


def table(results: dict, args) -> list[str]:
    raw = results["raw"]
    names = [name for name in results if name != "raw"]
    lines = [
        "| server | hit latency ms | push MB/s (x raw loopback) |",
        "|---|---|---|",
        f"| raw loopback socket | - | {raw:.0f} (1.00x) |",
    ]
    for name in names:
        figures = results[name]
        lines.append(
            f"| {name} | {figures['hit_ms']:.2f} | {figures['push']:.0f} "
            f"({figures['push'] / raw:.2f}x) |"
        )
    lines += [
        "",
        "| server | service | slow connections (held at the measurement; closed by server) "
        "| normal p50 / p95 ms without | with attack | answered with attack "
        "| memory per slow connection |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        for service in ("store", "worker"):
            f = results[name][service]
            answered = len(f["during"])
            lines.append(
                f"| {name} | {service} | {f['slow']} ({f['held']}; {f['closed']}) "
                f"| {percentile(f['before'], 0.5):.1f} / {percentile(f['before'], 0.95):.1f} "
                f"| {percentile(f['during'], 0.5):.1f} / {percentile(f['during'], 0.95):.1f} "
                f"| {answered} of {answered + f['during_failed']} within {args.timeout:g} s "
                f"| {f['kib_per_conn']:.1f} KiB |"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", default="front,gunicorn,uvicorn")
    parser.add_argument("--store-slow", type=int, default=2000)
    parser.add_argument("--worker-slow", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between drips")
    parser.add_argument("--requests", type=int, default=20, help="normal requests per figure")
    parser.add_argument("--timeout", type=float, default=5.0, help="a normal request's limit")
    parser.add_argument("--push-mb", type=float, default=512)
    parser.add_argument("--pushes", type=int, default=3)
    parser.add_argument("--out", type=Path, help="also write the tables to this markdown file")
    args = parser.parse_args(argv)
    lines, _ = run(args)
    text = "\n".join(lines)
    print("\n" + text)
    if args.out:
        bridge = "--with a2wsgi " if "uvicorn" in args.candidates else ""
        command = f"uv run {bridge}python benchmarks/slowloris.py " + " ".join(
            argv if argv is not None else sys.argv[1:]
        )
        args.out.write_text(
            "# Slow clients: the front server against the alternatives\n\n"
            f"Generated by `{command}`.\n\n"
            f"Normal requests: {args.requests} per figure on fresh connections (store: a hit "
            "with max_tokens 1; worker: GET /status); slow connections drip one header line "
            f"every {args.interval:g} s; push: {args.push_mb:g} MiB, the store's push (sized body, "
            "sendfile), blake3-verified (the default), "
            f"median of {args.pushes}.\n\n" + text + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
