"""What TRANSPORT=rdma costs a push, against plain HTTP measured in the same run.

Starts a real inference worker (with its RDMA listener) in this process on
free loopback ports and pushes one tiny model (``--size-mb``, default the
0.5 MB test model) into its cache ``--repeats`` times per row, timing the
transport's ``push`` from the store's side (no load, so only the transfer and
the fallback decision are measured). Rows:

- ``http``: TRANSPORT=http, the baseline;
- ``rdma, fallback (listener unreachable)``: nothing listens on the RDMA port;
- ``rdma, fallback (RDMA unusable)``: the listener answers but this machine
  has no pyverbs or no RDMA device;
- ``rdma``: a real RDMA push, only where pyverbs finds a device.

Run: ``uv run python benchmarks/rdma_fallback.py`` (a few seconds).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from inference_worker.app import create_app  # noqa: E402
from inference_worker.config import WorkerSettings  # noqa: E402
from model_store_server.transport.factory import FallbackTransport  # noqa: E402
from model_store_server.transport.http import HttpTransport, Transport  # noqa: E402
from model_store_server.transport.rdma import RdmaTransport  # noqa: E402
from model_store_server.worker_client import WorkerClient  # noqa: E402
from model_swap.digest import file_digest  # noqa: E402
from model_swap.probes import free_port  # noqa: E402
from model_swap.rdma_protocol import RdmaUnavailable  # noqa: E402
from model_swap.rdma_verbs import find_port  # noqa: E402
from model_swap.serving import ServerThread  # noqa: E402
from model_swap.tiny_models import write_tiny_model  # noqa: E402


def medians_ms(rows: list[tuple[str, Transport]], path: Path, digest: str, repeats: int):
    """Median push time per row; rows take turns, so drift affects them alike."""
    times: dict[str, list[float]] = {label: [] for label, _ in rows}
    for round_ in range(repeats + 1):  # round 0 warms up
        for label, transport in rows:
            started = time.perf_counter()
            result = transport.push(path.name, path, digest=digest, load=False)
            if round_:
                times[label].append(time.perf_counter() - started)
            assert result.nbytes == path.stat().st_size
    return [(label, statistics.median(times[label]) * 1000) for label, _ in rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size-mb", type=float, default=None, help="default: the 0.5 MB model")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    with tempfile.TemporaryDirectory() as tmp:
        path = write_tiny_model(Path(tmp) / "bench.gguf", size_mb=args.size_mb)
        digest = file_digest(path)
        size = path.stat().st_size
        settings = WorkerSettings(
            worker_host="127.0.0.1",
            worker_port=0,
            model_cache_dir=Path(tmp) / "cache",
            worker_rdma=True,
            worker_rdma_port=0,
        )
        app = create_app(settings)
        listener = app.extensions["rdma_listener"]
        with ServerThread(app) as worker:
            client = WorkerClient(worker.url, connect_timeout=5, read_timeout=60)
            http = HttpTransport(client)

            def rdma(port: int) -> RdmaTransport:
                return RdmaTransport(client, "127.0.0.1", port, connect_timeout=5, read_timeout=60)

            unreachable = FallbackTransport(rdma(free_port()), http)
            rows = [("http", http), ("rdma, fallback (listener unreachable)", unreachable)]
            try:
                where = find_port().describe()
            except RdmaUnavailable as err:
                where = None
                problem = str(err)
                unusable = FallbackTransport(rdma(listener.port), http)
                rows.append(("rdma, fallback (RDMA unusable)", unusable))
            else:
                rows.append(("rdma", rdma(listener.port)))
            results = medians_ms(rows, path, digest, args.repeats)
        listener.stop()

    print(f"push of a {size / 1e6:.2f} MB model into the worker's cache, median of {args.repeats}")
    print(f"RDMA here: {where}" if where else f"RDMA here: unusable ({problem})")
    print("| transport | median | vs http |")
    print("|---|---:|---:|")
    base = results[0][1]
    for label, ms in results:
        print(f"| {label} | {ms:.2f} ms | {ms - base:+.2f} ms ({ms / base:.2f}x) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
