"""Compare WSGI servers for the two services: hit TTFB, push throughput, streaming tokens/s.

Each candidate serves a real worker and a real store, each in its own process
(the way they run in production), in front of tiny random-weight models.
Every figure is the median over ``--rounds`` rounds in which the candidates
take turns (each round's figure being itself a median):

- hit TTFB: ``/user_request`` for the already-loaded model with max_tokens=1,
  time to the first body byte, median of ``--requests``;
- push: a ``--push-mb`` MiB model POSTed to the worker's ``/cache_model`` the
  way the store pushes (``WorkerClient.upload_file``: a sized body sent with
  sendfile(2), verified with the default digest, blake3), and the same body
  sent by a bare ``http.client`` connection, median MB/s of ``--pushes`` each;
- streaming: ``/user_request`` with max_tokens=``--stream-tokens``; tokens
  (the worker's own count) over the time from the first to the last byte, and
  how many separate reads the client saw per token (about 1 when every token
  is sent on its own, far below 1 when the server buffers).

Candidates: ``front`` is the production path itself (the services' commands:
model_swap/serving.py, an event loop reading request heads in front of a
thread pool); ``gunicorn`` is the previous production path (one gthread worker
process, model_swap/serving_gunicorn.py); ``uvicorn`` serves the WSGI app
through the a2wsgi bridge; ``cheroot`` and ``waitress`` are pure-Python
threaded servers in one process. Werkzeug's
development server (what the seed used) is the baseline; every figure is also
printed as a ratio to it, measured in the same run. All use 16 threads.
cheroot, waitress, uvicorn and a2wsgi are not project dependencies; run with them added::

    uv run --with waitress --with cheroot --with uvicorn --with a2wsgi python benchmarks/servers.py

A candidate that is not installed is reported as skipped.
"""

from __future__ import annotations

import argparse
import http.client
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.harness import free_port, start_process, stop_process  # noqa: E402
from model_swap.digest import TRANSFER_ALGORITHM  # noqa: E402
from model_swap.tiny_models import write_tiny_model  # noqa: E402

THREADS = 16
BASELINE = "werkzeug"
CANDIDATES = ("werkzeug", "front", "gunicorn", "uvicorn", "cheroot", "waitress")


def _app(service: str, build: bool = True):
    """(the service's app, or None unless ``build``; its host; its port)."""
    if service == "worker":
        from inference_worker.app import create_app
        from inference_worker.config import WorkerSettings

        settings = WorkerSettings.from_env()
        app = create_app(settings) if build else None
        return app, settings.worker_host, settings.worker_port
    from model_store_server.app import create_app
    from model_store_server.config import StoreSettings

    settings = StoreSettings.from_env()
    return create_app(settings) if build else None, settings.store_host, settings.store_port


def serve(candidate: str, service: str) -> None:
    """Serve one service with one candidate until SIGTERM (runs in a child process)."""
    if candidate == "front":
        # The production path itself (model_swap/serving.py), as the commands run it.
        if service == "worker":
            from inference_worker.cli import main
        else:
            from model_store_server.cli import main
        sys.exit(main())
    from model_swap.wsgi_input import with_readinto_input

    if candidate == "gunicorn":
        from model_swap.serving import ServeOptions
        from model_swap.serving_gunicorn import serve_gunicorn

        _, host, port = _app(service, build=False)
        options = ServeOptions(host, port, THREADS, shutdown_grace=5, write_timeout=60)
        # The app is built in gunicorn's worker process, after the fork.
        serve_gunicorn(service, lambda: _app(service)[0], options)
        return
    app, host, port = _app(service)
    if candidate == "uvicorn":
        import uvicorn
        from a2wsgi import WSGIMiddleware

        # limit_concurrency: uvicorn's connection cap (503 beyond it).
        asgi = WSGIMiddleware(with_readinto_input(app), workers=THREADS)
        uvicorn.run(asgi, host=host, port=port, log_level="warning", limit_concurrency=4096)
        return
    if candidate != "werkzeug":
        app = with_readinto_input(app)
    if candidate == "werkzeug":
        from werkzeug.serving import make_server

        server = make_server(host, port, app, threaded=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        server.serve_forever()
    elif candidate == "waitress":
        import waitress

        # The largest body waitress accepts defaults to 1 GiB; models are bigger.
        waitress.serve(app, host=host, port=port, threads=THREADS, max_request_body_size=1 << 40)
    elif candidate == "cheroot":
        from cheroot.wsgi import Server

        server = Server((host, port), app, numthreads=THREADS)
        signal.signal(signal.SIGTERM, lambda *_: server.stop())
        server.safe_start()
    else:
        raise SystemExit(f"unknown candidate {candidate}")


def _installed(candidate: str) -> bool:
    module = {
        "gunicorn": "gunicorn",
        "uvicorn": "a2wsgi",
        "cheroot": "cheroot",
        "waitress": "waitress",
    }.get(candidate)
    if module is None:
        return True
    try:
        __import__(module)
    except ImportError:
        return False
    return True


class Pair:
    """A worker and a store served by one candidate, each in its own process."""

    def __init__(self, candidate: str, workdir: Path, models: Path):
        self.candidate = candidate
        self.worker_port, self.store_port = free_port(), free_port()
        self.worker_url = f"http://127.0.0.1:{self.worker_port}"
        self.store_url = f"http://127.0.0.1:{self.store_port}"
        env = {
            "WORKER_HOST": "127.0.0.1",
            "STORE_HOST": "127.0.0.1",
            "WORKER_PORT": str(self.worker_port),
            "STORE_PORT": str(self.store_port),
            "WORKER_URL": self.worker_url,
            "MODELS_DIR": str(models),
            "MODEL_CACHE_DIR": str(workdir / f"cache-{candidate}"),
            "LOG_LEVEL": "WARNING",
            "SERVER_THREADS": str(THREADS),
        }
        self.processes = [
            start_process(
                [sys.executable, __file__, "serve", candidate, service],
                env,
                workdir / f"{candidate}-{service}.log",
                f"{url}/healthz",
            )
            for service, url in (("worker", self.worker_url), ("store", self.store_url))
        ]

    def stop(self) -> None:
        for process in self.processes:
            stop_process(process)


def ask(url: str, model: str, max_tokens: int) -> requests.Response:
    return requests.post(
        f"{url}/user_request",
        json={"prompt": "hello", "model": model, "max_tokens": max_tokens},
        stream=True,
        timeout=120,
    )


def hit_ttfb_ms(pair: Pair, model: str, count: int) -> float:
    first = ask(pair.store_url, model, 1)
    assert first.status_code == 200, first.text  # loaded now
    samples = []
    with requests.Session() as session:
        for _ in range(count):
            started = time.perf_counter()
            r = session.post(
                f"{pair.store_url}/user_request",
                json={"prompt": "hello", "model": model, "max_tokens": 1},
                stream=True,
                timeout=60,
            )
            next(r.iter_content(chunk_size=None))
            samples.append((time.perf_counter() - started) * 1000)
            r.close()
            assert r.headers["X-Cache-Action"] == "already_loaded", r.headers
    return statistics.median(samples)


def _sized_upload(url: str, path: Path, headers: dict[str, str]) -> None:
    """POST ``path`` with a Content-Length (no chunked framing), sent with sendfile(2)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=600)
    try:
        conn.putrequest("POST", "/cache_model")
        for key, value in {**headers, "Content-Length": str(path.stat().st_size)}.items():
            conn.putheader(key, value)
        conn.endheaders()
        with open(path, "rb") as file:
            conn.sock.sendfile(file)
        response = conn.getresponse()
        assert response.status == 200, response.read()
        response.read()
    finally:
        conn.close()


def push_mb_per_s(pair: Pair, path: Path, count: int) -> tuple[float, float]:
    """Median MB/s of (the store's push, a bare sized POST), both verified with the default
    digest (blake3, ``X-Model-Digest``) as the store's pushes are."""
    from model_store_server.digests import DigestCache
    from model_store_server.worker_client import WorkerClient

    client = WorkerClient(pair.worker_url, connect_timeout=5, read_timeout=600)
    size = path.stat().st_size
    headers = {
        "X-Model-Name": path.name,
        "X-Model-Size": str(size),
        "X-Model-Digest": DigestCache().digest(path, TRANSFER_ALGORITHM),
    }
    chunked, sized = [], []
    for _ in range(count):
        started = time.perf_counter()
        client.upload_file("/cache_model", path, headers)
        chunked.append(size / (time.perf_counter() - started) / 1e6)
        client.evict(path.name)
        started = time.perf_counter()
        _sized_upload(pair.worker_url, path, headers)
        sized.append(size / (time.perf_counter() - started) / 1e6)
        client.evict(path.name)
    return statistics.median(chunked), statistics.median(sized)


def stream_rates(pair: Pair, model: str, max_tokens: int, count: int) -> tuple[float, float]:
    """(tokens/s, client reads per token), medians."""
    rates, reads_per_token = [], []
    for _ in range(count):
        r = ask(pair.store_url, model, max_tokens)
        chunks = r.iter_content(chunk_size=None)
        next(chunks)
        started = time.perf_counter()
        reads = 1 + sum(1 for _ in chunks)
        seconds = time.perf_counter() - started
        tokens = requests.get(f"{pair.worker_url}/status", timeout=10).json()["last_generation"][
            "tokens"
        ]
        rates.append((tokens - 1) / seconds)
        reads_per_token.append(reads / tokens)
    return statistics.median(rates), statistics.median(reads_per_token)


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["serve"]:
        serve(argv[1], argv[2])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", default=",".join(CANDIDATES))
    parser.add_argument("--requests", type=int, default=50, help="hit requests per candidate")
    parser.add_argument("--pushes", type=int, default=3, help="pushes per candidate")
    parser.add_argument("--push-mb", type=float, default=256)
    parser.add_argument("--streams", type=int, default=5, help="streams per candidate")
    parser.add_argument("--stream-tokens", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3, help="medians over this many rounds")
    args = parser.parse_args(argv)

    candidates = [c for c in args.candidates.split(",") if c != BASELINE]
    candidates.insert(0, BASELINE)
    rounds: dict[str, list[tuple[float, float, float, float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-servers-") as tmp:
        workdir = Path(tmp)
        models = workdir / "models"
        models.mkdir()
        write_tiny_model(models / "tiny-a.gguf")
        big = write_tiny_model(models / "tiny-push.gguf", size_mb=args.push_mb)
        # Candidates take turns, round after round: the machine's load drifts (it is
        # shared), and interleaving spreads that drift over all of them.
        for round_number in range(1, args.rounds + 1):
            for candidate in candidates:
                if not _installed(candidate):
                    print(f"{candidate}: skipped (not installed)", flush=True)
                    continue
                pair = Pair(candidate, workdir, models)
                try:
                    ttfb = hit_ttfb_ms(pair, "tiny-a.gguf", args.requests)
                    push, sized = push_mb_per_s(pair, big, args.pushes)
                    tps, reads = stream_rates(pair, "tiny-a.gguf", args.stream_tokens, args.streams)
                finally:
                    pair.stop()
                rounds.setdefault(candidate, []).append((ttfb, push, sized, tps, reads))
                print(
                    f"round {round_number} {candidate}: hit TTFB {ttfb:.2f} ms, "
                    f"push {push:.0f} MB/s (sized body {sized:.0f} MB/s), "
                    f"stream {tps:.0f} tok/s ({reads:.2f} reads/token)",
                    flush=True,
                )
    results = {
        name: tuple(statistics.median(column) for column in zip(*rows, strict=True))
        for name, rows in rounds.items()
    }
    base = results[BASELINE]
    print(f"\nmedians of {args.rounds} rounds")
    print(
        f"| server | hit TTFB ms (x {BASELINE}) | push MB/s, store's client (x) "
        "| push MB/s, sized body (x) | stream tok/s (x) | reads/token |"
    )
    print("|---|---|---|---|---|---|")
    for name, row in results.items():
        ttfb, push, sized, tps = (
            f"{value:.{2 if i == 0 else 0}f} ({value / base[i]:.2f}x)"
            for i, value in enumerate(row[:4])
        )
        print(f"| {name} | {ttfb} | {push} | {sized} | {tps} | {row[4]:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
