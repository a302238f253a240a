"""Section 6 of the suite: latency under concurrency, push time against size,
slow clients, and decisions and start-up with many models.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    Services,
    free_port,
    median,
    percentile,
    start_process,
    stop_process,
)
from slowloris import percentile as slow_percentile  # noqa: E402
from slowloris import run as run_slowloris  # noqa: E402
from suite_report import OTHER, verdict  # noqa: E402

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
    state = service.fleet.first().view
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
