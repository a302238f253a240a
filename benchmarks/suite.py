"""The performance suite: every figure against a baseline measured in the same run.

    uv run python benchmarks/suite.py              # full run, about 12 minutes here
    uv run python benchmarks/suite.py --quick      # tiny sizes, one repeat (what the tests run)
    uv run python benchmarks/suite.py --only push --push-sizes 512 1024
                                                   # section 1 alone, rewritten in RESULTS.md

Writes ``RESULTS.md`` (tables: median, baseline, ratio, target) and
``results.png`` into the git-ignored ``benchmarks/out/``; ``--out-dir benchmarks``
regenerates the committed ones. Sections:

1. push throughput store -> worker over HTTP vs a raw loopback ``sendfile``;
2. swap latency (cold / warm / hit TTFB, max_tokens=1) for Gemma 3 270M and a
   tiny model vs bare llama-cpp-python load + first token, and the hit vs the
   worker's own /infer;
3. against a peer: llama-cpp-python's server in multi-model mode, same models;
4. streaming tokens/s through the store vs bare llama-cpp-python (Gemma);
5. peak RSS growth of the worker and of the sender during the largest push;
6. concurrency (1/4/16 clients on hits), push time vs size, ``decision_ms``
   with 10,000 models in MODELS_DIR and a 1,000-entry cache, store start-up
   with 10,000 (sparse, 1 GiB each) model files;
7. the OpenAI API's hit latency against ``/user_request`` and against
   llama-cpp-python's own ``/v1/chat/completions`` (``benchmarks/openai_path.py``);
8. three models alternating with ``MAX_LOADED_MODELS=3`` against ``=1``, and the
   worker's RSS with 1, 2 and 3 resident against the footprint estimate
   (``benchmarks/residency.py``);
9. the scheduler: a concurrent burst over three models with one resident place
   against ``SCHEDULER_MAX_WAIT=0`` and llama-server's router mode, a thrash soak,
   and hit latency through the store against the worker (``benchmarks/scheduler.py``).
10. slow clients: the front server against the previous gunicorn path (hit
   latency, push against a raw socket, normal requests under 2,000 slow
   connections to the store and 1,000 to the worker, memory per slow
   connection; ``benchmarks/slowloris.py``).
11. 1 / 2 / 4 / 8 concurrent streams on one model (continuous batching): aggregate
   tokens/s and TTFT against our single stream and against llama-server ``-np N``
   built from the llama.cpp llama-cpp-python vendors (11a), and steady traffic:
   staggered closed-loop clients and Poisson arrivals (11b; ``benchmarks/batching.py``).

Everything runs on 127.0.0.1 and is bounded in count and time.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from batching import bench_batching  # noqa: E402
from harness import (  # noqa: E402
    ROOT,
    Services,
    bare_load_first_token,
    free_port,
    median,
    percentile,
    raw_sendfile_seconds,
    reset_peak_rss,
    rss_bytes,
    serving_pid,
    start_llama_server,
    start_process,
    stop_process,
    stream_timing,
)
from openai_path import bench_openai  # noqa: E402
from residency import bench_residency  # noqa: E402
from scheduler import bench_scheduler  # noqa: E402
from slowloris import percentile as slow_percentile  # noqa: E402
from slowloris import run as run_slowloris  # noqa: E402

from model_store_server.digests import DigestCache  # noqa: E402
from model_store_server.transport.http import HttpTransport  # noqa: E402
from model_store_server.worker_client import WorkerClient  # noqa: E402
from model_swap.digest import hasher  # noqa: E402
from model_swap.tiny_models import write_tiny_model  # noqa: E402
from model_swap_cli.cli import ensure_default_model  # noqa: E402

GEMMA = "gemma-3-270m-q4_k_m.gguf"
OTHER = "tiny-other.gguf"
MB = 1024 * 1024


class Report:
    """Collects result tables and renders RESULTS.md."""

    def __init__(self) -> None:
        self.sections: list[tuple[str, list[str], list[list[str]], str]] = []
        self.data: dict = {}

    def table(self, title: str, header: list[str], rows: list[list[str]], note: str = "") -> None:
        self.sections.append((title, header, rows, note))
        print(f"\n## {title}")
        for row in rows:
            print("  " + " | ".join(row))

    def markdown(self, args) -> str:
        lines = [
            "# Performance results",
            "",
            f"Produced by `uv run python benchmarks/suite.py{' --quick' if args.quick else ''}` "
            f"on {datetime.now(UTC).strftime('%Y-%m-%d')}: {os.cpu_count()} CPU cores, "
            f"{platform.machine()}, no GPU, Python {platform.python_version()}. "
            f"Every figure is the median of {args.repeats} runs unless stated, next to a "
            "baseline measured in the same run. `ms` are milliseconds, `MB` are 10^6 bytes.",
            "",
        ]
        for title, header, rows, note in self.sections:
            lines += [f"## {title}", ""]
            if note:
                lines += [note, ""]
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "|".join("---" for _ in header) + "|")
            lines += ["| " + " | ".join(row) + " |" for row in rows]
            lines.append("")
        # Generated from this run only: hand-written analysis of earlier runs stays in
        # benchmarks/ANALYSIS.md, which names the runs it describes.
        lines += ["![benchmark chart](results.png)", ""]
        return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


# -- 1. push throughput -------------------------------------------------------------------


def push_seconds(transport: HttpTransport, client: WorkerClient, path: Path, digest: str) -> float:
    """One push of ``path`` into the worker's cache, under a name the store does not track."""
    name = f"bench-push-{path.name}"
    result = transport.push(name, path, digest=digest, load=False)
    client.evict(name)
    return result.seconds


def bench_push(report, args, tmp: Path, services: Services) -> None:
    client = WorkerClient(services.worker_url, connect_timeout=5, read_timeout=600)
    transport = HttpTransport(client)
    digests = DigestCache()
    rows, scale = [], []
    for size_mb in args.push_sizes:
        path = write_tiny_model(tmp / f"push-{size_mb}.gguf", size_mb=size_mb)
        blake, sha = digests.digest(path, "blake3"), digests.digest(path, "sha256")
        raws, pushes, sha_pushes = [], [], []
        runs = [
            (raws, partial(raw_sendfile_seconds, path, tmp)),
            (pushes, partial(push_seconds, transport, client, path, blake)),
            (sha_pushes, partial(push_seconds, transport, client, path, sha)),
        ]
        for i in range(args.repeats):
            # A different order each round: no variant always runs first, or after another.
            for times, run in runs[i % 3 :] + runs[: i % 3]:
                times.append(run())
        nbytes = path.stat().st_size
        raw_s, push_s, sha_s = median(raws), median(pushes), median(sha_pushes)
        ratio = raw_s / push_s
        scale.append((nbytes, push_s))
        rows.append(
            [
                f"{nbytes / 1e6:.0f} MB",
                f"{raw_s * 1000:.0f} ms ({nbytes / raw_s / 1e6:.0f} MB/s)",
                f"{push_s * 1000:.0f} ms ({nbytes / push_s / 1e6:.0f} MB/s)",
                f"{ratio:.2f}x",
                f"{sha_s * 1000:.0f} ms ({nbytes / sha_s / 1e6:.0f} MB/s), {raw_s / sha_s:.2f}x",
                f">= 0.80x: {verdict(ratio >= 0.8)}",
            ]
        )
        report.data.setdefault("push", []).append(
            {
                "mb": nbytes / 1e6,
                "raw_mbps": nbytes / raw_s / 1e6,
                "http_mbps": nbytes / push_s / 1e6,
                "sha256_mbps": nbytes / sha_s / 1e6,
            }
        )
        if size_mb == max(args.push_sizes):
            for algorithm in ("blake3", "sha256"):
                alone = hash_seconds(path, algorithm)
                rows.append(
                    [
                        f"{nbytes / 1e6:.0f} MB",
                        "(same baseline)",
                        f"{algorithm} alone, file in memory: {alone * 1000:.0f} ms "
                        f"({nbytes / alone / 1e6:.0f} MB/s)",
                        f"{raw_s / alone:.2f}x",
                        "",
                        "the hashing a verified push adds, if nothing overlapped it",
                    ]
                )
        else:
            path.unlink()
    report.table(
        "1. Push throughput (store -> worker, HTTP, into the worker's cache)",
        [
            "file",
            "raw loopback sendfile (baseline)",
            "HTTP push, blake3-verified (default)",
            "ratio",
            "HTTP push, sha256-verified, ratio",
            "target",
        ],
        rows,
        "The HTTP push is the store's own transport (one sized body sent with sendfile(2)); the "
        "worker reads it into reused buffers that a second thread hashes and writes to a "
        "temporary file, checks GGUF magic, size and digest, renames. The store announces "
        "`X-Model-Digest: blake3:<hex>` by default; the sha256 column announces "
        "`sha256:<hex>` instead (same code otherwise). The baseline sends the same file over a "
        "loopback socket with sendfile(2) into a file, with no HTTP, no hashing.",
    )
    report.data["push_scale"] = scale


def hash_seconds(path: Path, algorithm: str) -> float:
    """Median seconds for ``algorithm`` over ``path`` already in memory (as the worker hashes)."""
    data = path.read_bytes()
    times = []
    for _ in range(3):
        started = time.perf_counter()
        h = hasher(algorithm)
        h.update(data)
        h.hexdigest()
        times.append(time.perf_counter() - started)
    return median(times)


# -- 2. swap latency ----------------------------------------------------------------------


def bench_swaps(report, args, models: Path, services: Services, subjects: list[str]) -> None:
    rows = []
    for model in subjects:
        bare, cold, warm, hit, direct = [], [], [], [], []
        for _ in range(args.repeats):
            bare.append(bare_load_first_token(models / model))
            services.reset()
            cold.append(services.ask(model, "load_from_store")[0])
            hit.append(services.ask(model, "already_loaded")[0])
            direct.append(
                stream_timing(
                    f"{services.worker_url}/infer",
                    {"prompt": "Once upon a time", "max_tokens": 1, "model": model},
                )[0]
            )
            services.ask(OTHER)
            warm.append(services.ask(model, "load_from_local_store")[0])
        b, c, w, h, d = (median(v) * 1000 for v in (bare, cold, warm, hit, direct))
        # The cold target: push time + warm time (+5%). Push time of this file, measured now.
        client = WorkerClient(services.worker_url, connect_timeout=5, read_timeout=600)
        path = models / model
        digest = DigestCache().digest(path)
        pushes = [
            push_seconds(HttpTransport(client), client, path, digest) for _ in range(args.repeats)
        ]
        p = median(pushes) * 1000
        report.data.setdefault("swaps", []).append(
            {"model": model, "bare": b, "cold": c, "warm": w, "hit": h, "direct": d, "push": p}
        )
        size = path.stat().st_size / 1e6
        rows += [
            [
                model,
                f"{size:.0f} MB",
                "warm (load_from_local_store)",
                f"{w:.1f} ms",
                f"bare load + 1st token {b:.1f} ms",
                f"{w / b:.2f}x",
                f"<= 1.10x: {verdict(w <= 1.1 * b)}",
            ],
            [
                model,
                f"{size:.0f} MB",
                "hit (already_loaded)",
                f"{h:.1f} ms",
                f"worker /infer alone {d:.1f} ms",
                f"+{h - d:.1f} ms",
                f"<= +2 ms: {verdict(h <= d + 2)}",
            ],
            [
                model,
                f"{size:.0f} MB",
                "cold (load_from_store)",
                f"{c:.1f} ms",
                f"push {p:.1f} + warm {w:.1f} ms",
                f"{c / (p + w):.2f}x",
                f"<= 1.05x: {verdict(c <= 1.05 * (p + w))}",
            ],
        ]
    report.table(
        "2. Swap latency: time to first byte through the store, max_tokens=1",
        ["model", "size", "case", "store", "baseline", "ratio", "target"],
        rows,
        "Bare = llama-cpp-python in the benchmark process: `Llama(path)` + tokenize + first "
        "sampled token. Before each cold request the store is reset (`POST /reset`); warm = the "
        "model is in the worker's disk cache but another one is loaded.",
    )


# -- 3. against a peer --------------------------------------------------------------------


def bench_peer(report, args, tmp: Path, models: Path, services: Services, subjects) -> None:
    peer, peer_url = start_llama_server(tmp, {m: models / m for m in [*subjects, OTHER]}, "peer")
    url = f"{peer_url}/v1/completions"

    def peer_ttfb(model: str) -> float:
        body = {"model": model, "prompt": "Once upon a time", "max_tokens": 1, "stream": True}
        return stream_timing(url, body)[0]

    rows = []
    try:
        for model in subjects:
            services.ask(model)  # in the worker's cache, so the swaps below are local loads
            peer_hit, peer_swap, our_hit, our_swap = [], [], [], []
            for _ in range(args.repeats):
                peer_ttfb(OTHER)
                peer_swap.append(peer_ttfb(model))
                peer_hit.append(peer_ttfb(model))
                services.ask(OTHER)
                our_swap.append(services.ask(model, "load_from_local_store")[0])
                our_hit.append(services.ask(model, "already_loaded")[0])
            for case, ours, theirs in (("hit", our_hit, peer_hit), ("swap", our_swap, peer_swap)):
                o, t = median(ours) * 1000, median(theirs) * 1000
                rows.append(
                    [
                        model,
                        case,
                        f"{o:.1f} ms",
                        f"{t:.1f} ms",
                        f"{o / t:.2f}x",
                        f"<= 1.00x: {verdict(o <= t)}",
                    ]
                )
                report.data.setdefault("peer", []).append(
                    {"model": model, "case": case, "ours": o, "peer": t}
                )
    finally:
        stop_process(peer)
    report.table(
        "3. Against a peer: llama-cpp-python's server, multi-model config, same models",
        ["model", "case", "model-swap TTFB", "llama-cpp-python server TTFB", "ratio", "target"],
        rows,
        "Peer: `python -m llama_cpp.server --config_file` with the same files, streamed "
        "`/v1/completions`, max_tokens=1. Its swap loads from local disk, so it is compared "
        "with model-swap's warm swap (load_from_local_store); hit = the model already loaded.",
    )


# -- 4. streaming -------------------------------------------------------------------------


def bare_tokens_per_second(path: Path, tokens: int) -> float:
    import llama_cpp
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_gpu_layers=-1, n_ctx=2048, verbose=False)
    prompt = llm.tokenize(b"Once upon a time", add_bos=True)
    count, first = 0, None
    for token in llm.generate(prompt):
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
            break
        llm.detokenize([token])
        count += 1
        if first is None:
            first = time.perf_counter()
        if count >= tokens:
            break
    elapsed = time.perf_counter() - first
    llm.close()
    return (count - 1) / elapsed


def bench_streaming(report, args, models: Path, services: Services, model: str) -> None:
    ours, bare = [], []
    for _ in range(args.repeats):
        bare.append(bare_tokens_per_second(models / model, args.stream_tokens))
        services.ask(model)
        first, total = services.ask(model, "already_loaded", max_tokens=args.stream_tokens)
        count = services.worker_status()["last_generation"]["tokens"]
        ours.append((count - 1) / (total - first))
    o, b = median(ours), median(bare)
    report.data["streaming"] = {"ours": o, "bare": b}
    report.table(
        f"4. Streaming: tokens per second after the first token, "
        f"{args.stream_tokens} tokens, {model}",
        ["through the store", "bare llama-cpp-python", "ratio", "target"],
        [
            [
                f"{o:.1f} tok/s",
                f"{b:.1f} tok/s",
                f"{o / b:.2f}x",
                f">= 0.97x: {verdict(o >= 0.97 * b)}",
            ]
        ],
        "Through the store: tokens counted by the worker (`last_generation`), time measured by the "
        "client from the first byte to the end of the stream. Bare: the same sampling loop in "
        "the benchmark process.",
    )


# -- 5. memory ----------------------------------------------------------------------------


def bench_memory(report, args, tmp: Path, services: Services) -> None:
    path = tmp / f"push-{max(args.push_sizes)}.gguf"
    client = WorkerClient(services.worker_url, connect_timeout=5, read_timeout=600)
    transport = HttpTransport(client)
    digest = DigestCache().digest(path)
    # The gunicorn worker process that receives, not the master that supervises it.
    worker_pid, me = serving_pid(services.worker.pid), os.getpid()
    worker_growth, sender_growth = [], []
    for _ in range(args.repeats):
        reset_peak_rss(worker_pid)
        reset_peak_rss(me)
        w0, s0 = rss_bytes(worker_pid), rss_bytes(me)
        transport.push("bench-memory.gguf", path, digest=digest, load=False)
        worker_growth.append(rss_bytes(worker_pid, "VmHWM") - w0)
        sender_growth.append(rss_bytes(me, "VmHWM") - s0)
        client.evict("bench-memory.gguf")
    w, s = median(worker_growth) / MB, median(sender_growth) / MB
    report.data["memory"] = {"worker": w, "sender": s}
    report.table(
        f"5. Memory: peak RSS growth during a {path.stat().st_size / 1e6:.0f} MB push",
        ["process", "peak RSS growth", "target"],
        [
            ["worker (receiving)", f"{w:.1f} MiB", f"<= 64 MiB: {verdict(w <= 64)}"],
            ["store's sender (HttpTransport)", f"{s:.1f} MiB", f"<= 64 MiB: {verdict(s <= 64)}"],
        ],
        "Peak RSS (VmHWM, reset with /proc/PID/clear_refs before each push) minus RSS before. "
        "The sender is the store's HttpTransport running in the benchmark process.",
    )


# -- 6. concurrency and scale --------------------------------------------------------------


def bench_concurrency(report, args, services: Services) -> None:
    model = OTHER
    services.ask(model)
    rows = []
    for clients in (1, 4, 16):
        total = args.hits_per_level
        latencies: list[float] = []

        def one(_):
            return services.ask(model, "already_loaded")[1]

        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            latencies = list(pool.map(one, range(total)))
        elapsed = time.perf_counter() - started
        rows.append(
            [
                str(clients),
                f"{total / elapsed:.0f}",
                f"{percentile(latencies, 50) * 1000:.1f} ms",
                f"{percentile(latencies, 95) * 1000:.1f} ms",
            ]
        )
        report.data.setdefault("concurrency", []).append(
            {
                "clients": clients,
                "rps": total / elapsed,
                "p50": percentile(latencies, 50) * 1000,
                "p95": percentile(latencies, 95) * 1000,
            }
        )
    report.table(
        f"6a. Concurrency: {args.hits_per_level} hits (already_loaded, max_tokens=1, "
        f"{OTHER}) per level",
        ["clients", "requests/s", "p50 latency", "p95 latency"],
        rows,
        "Every request streams a generated token from the worker's single llama.cpp context, so "
        "throughput is bounded by that context (requests queue first come, first served).",
    )


def bench_scale(report, args) -> None:
    rows = []
    scale = report.data["push_scale"]
    if len(scale) >= 2:
        xs = [n / 1e6 for n, _ in scale]
        ys = [s for _, s in scale]
        slope, intercept = statistics.linear_regression(xs, ys)
        r = statistics.correlation(xs, ys)
        for x, y in zip(xs, ys, strict=True):
            rows.append(
                [f"{x:.0f} MB", f"{y * 1000:.0f} ms", f"{(slope * x + intercept) * 1000:.0f} ms"]
            )
        rows.append(
            ["linear fit", f"{slope * 1e6 / 1e6 * 1000:.2f} ms per MB", f"r^2 = {r * r:.4f}"]
        )
        report.table(
            "6b. Push time against model size (from section 1)",
            ["file", "push time", "linear fit"],
            rows,
        )


def bench_slow_clients(report, args) -> None:
    quick = args.repeats == 1
    options = argparse.Namespace(
        candidates="front,gunicorn",
        store_slow=50 if quick else 2000,
        worker_slow=50 if quick else 1000,
        interval=2.0,
        requests=2 if quick else 20,
        timeout=2.0 if quick else 5.0,
        push_mb=8 if quick else 512,
        pushes=1 if quick else 3,
    )
    _, results = run_slowloris(options)
    raw, old = results["raw"], results["gunicorn"]
    rows = [["raw loopback socket", "-", f"{raw:.0f} MB/s (1.00x)"]]
    for name in ("front", "gunicorn"):
        hit, push = results[name]["hit_ms"], results[name]["push"]
        rows.append(
            [
                name,
                f"{hit:.2f} ms ({hit / old['hit_ms']:.2f}x gunicorn)",
                f"{push:.0f} MB/s ({push / raw:.2f}x raw)",
            ]
        )
    front_push = results["front"]["push"] / raw
    report.table(
        f"10a. Front server vs gunicorn: hit latency and a {options.push_mb:g} MiB push",
        ["server", "hit latency (median)", "push (chunked, sha256-verified)"],
        rows,
        f"Push target >= 0.8x raw: {verdict(front_push >= 0.8)} ({front_push:.2f}x).",
    )
    rows = []
    for name in ("front", "gunicorn"):
        for service in ("store", "worker"):
            f = results[name][service]
            answered = len(f["during"])
            rows.append(
                [
                    name,
                    service,
                    f"{f['slow']} ({f['held']} held)",
                    f"{slow_percentile(f['before'], 0.5):.1f} / "
                    f"{slow_percentile(f['before'], 0.95):.1f} ms",
                    f"{slow_percentile(f['during'], 0.5):.1f} / "
                    f"{slow_percentile(f['during'], 0.95):.1f} ms",
                    f"{answered} of {answered + f['during_failed']}",
                    f"{f['kib_per_conn']:.1f} KiB",
                ]
            )
    report.table(
        "10b. Slowloris: normal requests while slow connections drip their request heads",
        [
            "server",
            "service",
            "slow connections",
            "p50 / p95 without",
            "p50 / p95 with attack",
            f"answered within {options.timeout:g} s",
            "memory per slow connection",
        ],
        rows,
        "Normal requests on fresh connections (store: a hit with max_tokens 1; worker: "
        "GET /status). Each slow connection sends one header line every 2 s.",
    )


def bench_decisions(report, args, tmp: Path) -> None:
    """decision_ms with N models in MODELS_DIR and a K-entry cache, in the real store code."""
    from model_store_server.config import StoreSettings
    from model_store_server.core.orchestrator import SwapService

    models = tmp / "many-models"
    models.mkdir()
    for i in range(args.many_models):
        # Sparse 1 GiB files: reading them at start-up would take minutes, so a fast start
        # shows that nothing reads them.
        with open(models / f"m{i:05d}.gguf", "wb") as f:
            f.truncate(1 << 30)
    settings = StoreSettings(
        models_dir=models, worker_url="http://127.0.0.1:9", max_cache_size=args.cache_entries
    )
    service = SwapService(settings)
    state = service.state
    names = sorted(p.name for p in models.iterdir())
    for name in names[: args.cache_entries]:  # fill the policy's 1,000 entries
        state.admit(name, time.monotonic() + 5).commit().release()
    timings = {"hit": [], "miss (evicts the LRU)": []}
    for i in range(2000):
        if i % 2 == 0:  # a model admitted earlier (a hit unless LRU evicted it since)
            name = names[(i * 7919) % args.cache_entries]
        else:  # a model never admitted yet
            name = names[args.cache_entries + i % (len(names) - args.cache_entries)]
        service.model_path(name)
        grant = state.admit(name, time.monotonic() + 5)
        kind = (
            "hit" if grant.decision.action.value != "load_from_store" else "miss (evicts the LRU)"
        )
        timings[kind].append(grant.ticket.decision_ms)
        (grant.commit() if grant.owns_swap else grant).release()

    port = free_port()
    env = {
        "STORE_HOST": "127.0.0.1",
        "STORE_PORT": str(port),
        "MODELS_DIR": str(models),
        "WORKER_URL": "http://127.0.0.1:9",
        "LOG_LEVEL": "WARNING",
    }
    empty = tmp / "no-models"
    empty.mkdir()
    starts = {}
    for label, directory in (("empty MODELS_DIR", empty), (f"{args.many_models} files", models)):
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            process = start_process(
                [sys.executable, "-m", "model_store_server.cli"],
                {**env, "MODELS_DIR": str(directory)},
                tmp / "startup.log",
                f"http://127.0.0.1:{port}/healthz",
            )
            times.append(time.perf_counter() - started)
            status_started = time.perf_counter()
            listed = len(
                requests.get(f"http://127.0.0.1:{port}/status", timeout=60).json()["available"]
            )
            status_ms = (time.perf_counter() - status_started) * 1000
            stop_process(process)
        starts[label] = (median(times), listed, status_ms)
    rows = []
    for kind, values in timings.items():
        p50 = percentile(values, 50)
        rows.append(
            [
                f"decision_ms, {kind}",
                f"p50 {p50:.3f} ms, p95 {percentile(values, 95):.3f} ms",
                f"p50 <= 1 ms: {verdict(p50 <= 1)}",
            ]
        )
    base = starts["empty MODELS_DIR"][0]
    for label, (seconds, listed, status_ms) in starts.items():
        rows.append(
            [
                f"store start-up to /healthz, {label}",
                f"{seconds * 1000:.0f} ms "
                f"({seconds / base:.2f}x empty); GET /status lists {listed} in {status_ms:.0f} ms",
                "does not read model files" if listed else "baseline",
            ]
        )
    report.data["decisions"] = {k: percentile(v, 50) for k, v in timings.items()}
    report.table(
        f"6c. Scale: {args.many_models} models in MODELS_DIR, a {args.cache_entries}-entry cache",
        ["measure", "result", "target"],
        rows,
        f"decision_ms is the store's own measurement (WorkerView.admit around the policy "
        f"decision), taken over 2,000 requests alternating hits and misses on an lru policy "
        f"holding {args.cache_entries} models; each request also resolves its file in "
        f"MODELS_DIR. The {args.many_models} files are sparse 1 GiB files, so a start-up that "
        "read them would take minutes.",
    )


# -- chart --------------------------------------------------------------------------------


def chart(report: Report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    ax = axes[0][0]
    push = report.data.get("push", [])
    labels = [f"{p['mb']:.0f} MB" for p in push]
    xs = range(len(push))
    ax.bar(
        [x - 0.2 for x in xs],
        [p["raw_mbps"] for p in push],
        0.4,
        label="raw sendfile (baseline)",
        color="gray",
    )
    ax.bar(
        [x + 0.2 for x in xs],
        [p["http_mbps"] for p in push],
        0.4,
        label="HTTP push + blake3",
        color="tab:orange",
    )
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("MB/s")
    ax.set_title("1. push throughput")
    ax.legend(fontsize=8)

    ax = axes[0][1]
    swaps = report.data.get("swaps", [])
    cases = ["bare", "warm", "cold", "hit", "direct"]
    names = {
        "bare": "bare load+1st token",
        "warm": "warm",
        "cold": "cold",
        "hit": "hit",
        "direct": "worker /infer",
    }
    width = 0.8 / max(len(swaps), 1)
    for i, s in enumerate(swaps):
        ax.bar(
            [c + i * width for c in range(len(cases))],
            [s[c] for c in cases],
            width,
            label=s["model"],
        )
    ax.set_xticks(
        [c + width * (len(swaps) - 1) / 2 for c in range(len(cases))],
        [names[c] for c in cases],
        fontsize=8,
    )
    ax.set_yscale("log")
    ax.set_ylabel("ms to first byte (log)")
    ax.set_title("2. swap latency")
    ax.legend(fontsize=8)

    ax = axes[1][0]
    peer = report.data.get("peer", [])
    labels = [f"{p['model'][:18]}\n{p['case']}" for p in peer]
    xs = range(len(peer))
    ax.bar(
        [x - 0.2 for x in xs],
        [p["peer"] for p in peer],
        0.4,
        label="llama-cpp-python server",
        color="gray",
    )
    ax.bar(
        [x + 0.2 for x in xs], [p["ours"] for p in peer], 0.4, label="model-swap", color="tab:blue"
    )
    ax.set_xticks(list(xs), labels, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("ms to first byte (log)")
    ax.set_title("3. against a peer")
    ax.legend(fontsize=8)

    ax = axes[1][1]
    conc = report.data.get("concurrency", [])
    ax.plot([c["clients"] for c in conc], [c["p50"] for c in conc], "o-", label="p50")
    ax.plot([c["clients"] for c in conc], [c["p95"] for c in conc], "o-", label="p95")
    ax.set_xlabel("concurrent clients (hits)")
    ax.set_ylabel("latency, ms")
    ax.set_title("6. latency under concurrency")
    ax.legend(fontsize=8)
    fig.suptitle("model-swap benchmark suite (medians; see RESULTS.md for baselines and ratios)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def push_only(args) -> int:
    """Section 1 alone: measured, printed, and spliced into ``--out-dir``'s RESULTS.md."""
    report = Report()
    with tempfile.TemporaryDirectory(prefix="model-swap-bench-") as tmp_name:
        tmp = Path(tmp_name)
        models = tmp / "models"
        models.mkdir()
        write_tiny_model(models / OTHER)
        services = Services(tmp, models, CACHE_POLICY="lru", MAX_CACHE_SIZE="3")
        try:
            services.ask(OTHER, "load_from_store")  # warm both processes up
            bench_push(report, args, tmp, services)
        finally:
            services.stop()
    results = args.out_dir / "RESULTS.md"
    title, header, rows, note = report.sections[0]
    note += (
        f" Median of {args.repeats} runs, from `uv run python benchmarks/suite.py --only push "
        f"--push-sizes {' '.join(map(str, args.push_sizes))} --repeats {args.repeats}` on "
        f"{datetime.now(UTC).strftime('%Y-%m-%d')}."
    )
    section = "\n".join(
        [f"## {title}", "", note, "", "| " + " | ".join(header) + " |"]
        + ["|" + "|".join("---" for _ in header) + "|"]
        + ["| " + " | ".join(row) + " |" for row in rows]
    )
    if results.exists():
        text = results.read_text()
        start = text.index("\n## 1. ") + 1
        end = text.index("\n## ", start) + 1
        results.write_text(text[:start] + section + "\n\n" + text[end:])
        print(f"\nreplaced section 1 of {results}")
    else:  # nothing to splice into: the section on its own
        args.out_dir.mkdir(parents=True, exist_ok=True)
        results.write_text(section + "\n")
        print(f"\nwrote section 1 alone to {results}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and one repeat")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "out")
    parser.add_argument(
        "--only",
        choices=["push"],
        help="run one section and replace only that section of an existing RESULTS.md",
    )
    parser.add_argument("--push-sizes", type=int, nargs="+", metavar="MB", help="push file sizes")
    parser.add_argument("--repeats", type=int, help="runs per figure (the median is reported)")
    args = parser.parse_args()
    overrides = {"push_sizes": args.push_sizes, "repeats": args.repeats}
    if args.quick:
        args.repeats, args.push_sizes, args.tiny_mb, args.gemma = 1, [1, 2], 1, False
        args.stream_tokens, args.hits_per_level, args.many_models, args.cache_entries = (
            16,
            16,
            200,
            50,
        )
    else:
        args.repeats, args.push_sizes, args.tiny_mb, args.gemma = (
            5,
            [64, 128, 256, 512, 1024],
            100,
            True,
        )
        args.stream_tokens, args.hits_per_level, args.many_models, args.cache_entries = (
            256,
            200,
            10000,
            1000,
        )
    for key, value in overrides.items():
        if value is not None:
            setattr(args, key, value)
    if args.only == "push":
        return push_only(args)

    report = Report()
    with tempfile.TemporaryDirectory(prefix="model-swap-bench-") as tmp_name:
        tmp = Path(tmp_name)
        models = tmp / "models"
        models.mkdir()
        tiny = f"tiny-{args.tiny_mb}mb.gguf"
        write_tiny_model(models / tiny, size_mb=args.tiny_mb)
        write_tiny_model(models / OTHER)
        subjects = [tiny]
        if args.gemma:
            ensure_default_model(models)
            subjects.insert(0, GEMMA)
        services = Services(tmp, models, CACHE_POLICY="lru", MAX_CACHE_SIZE="3")
        try:
            services.ask(OTHER, "load_from_store")  # warm both processes up
            bench_push(report, args, tmp, services)
            bench_swaps(report, args, models, services, subjects)
            bench_peer(report, args, tmp, models, services, subjects)
            bench_streaming(report, args, models, services, subjects[0])
            bench_openai(report, args, tmp, models, services, subjects[0])
            bench_memory(report, args, tmp, services)
            bench_concurrency(report, args, services)
        finally:
            services.stop()
        bench_residency(report, args, tmp, models, subjects[0])
        bench_scheduler(report, args, tmp, models, subjects[0])
        bench_batching(report, args, tmp, models, subjects[0])
        bench_scale(report, args)
        bench_decisions(report, args, tmp)
    bench_slow_clients(report, args)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "RESULTS.md").write_text(report.markdown(args))
    chart(report, args.out_dir / "results.png")
    print(f"\nwrote {args.out_dir / 'RESULTS.md'} and {args.out_dir / 'results.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
