"""Sections 1 and 5 of the suite: push throughput against a raw loopback
``sendfile``, and the memory a push costs the worker and the sender.
"""

from __future__ import annotations

import os
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    Services,
    median,
    raw_sendfile_seconds,
    reset_peak_rss,
    rss_bytes,
    serving_pid,
)
from suite_report import MB, verdict  # noqa: E402

from model_store_server.digests import DigestCache  # noqa: E402
from model_store_server.transport.http import HttpTransport  # noqa: E402
from model_store_server.worker_client import WorkerClient  # noqa: E402
from model_swap.digest import hasher  # noqa: E402
from model_swap.tiny_models import write_tiny_model  # noqa: E402

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
        "worker (its front server) splices it from the socket through a pipe into a temporary "
        "file, one kernel copy, while a second thread hashes each written region from a "
        "read-only mapping of the file; it checks GGUF magic, size and digest, renames. The "
        "store announces "
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
