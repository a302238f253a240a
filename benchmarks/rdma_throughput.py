"""RDMA push throughput, against HTTP and a raw loopback socket measured in the same run.

Runs only where pyverbs finds an RDMA device (an RDMA NIC, or soft-RoCE on a
plain NIC): starts a real worker with its RDMA listener in this process and
pushes model files of ``--sizes`` MB into its cache over RDMA (the store's
RdmaTransport, verified by blake3 like every push) and over HTTP, next to
the raw loopback ``sendfile`` baseline of ``benchmarks/suite.py``. Elsewhere it
prints why it skipped (pyverbs missing, no device, no active port, or the
RLIMIT_MEMLOCK limit) and exits 0, so CI and the tests can run it anywhere.

    uv run python benchmarks/rdma_throughput.py --sizes 256 1024 --repeats 5

RDMA_DEVICE, RDMA_DEVICE_PORT and RDMA_GID_INDEX choose the port, as for the
services.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import raw_sendfile_seconds  # noqa: E402

from inference_worker.config import WorkerSettings  # noqa: E402
from inference_worker.rdma_listener import RdmaListener  # noqa: E402
from model_store_server.transport.http import HttpTransport  # noqa: E402
from model_store_server.transport.rdma import RdmaTransport  # noqa: E402
from model_store_server.worker_client import WorkerClient  # noqa: E402
from model_swap.digest import file_digest  # noqa: E402
from model_swap.rdma_protocol import DEFAULT_CHUNK_BYTES, RING_SLOTS  # noqa: E402
from model_swap.rdma_verbs import PortChoice, VerbsEndpoints  # noqa: E402
from model_swap.serving import ServerThread  # noqa: E402
from model_swap.tiny_models import write_tiny_model  # noqa: E402


def skip_reason(endpoints: VerbsEndpoints) -> str | None:
    """Why RDMA cannot be measured here, or None."""
    try:
        usable, where = endpoints.check_start(
            2 * RING_SLOTS * DEFAULT_CHUNK_BYTES, "the benchmark (a store and a worker ring)"
        )
    except Exception as err:  # noqa: BLE001 - RLIMIT_MEMLOCK, or anything pyverbs raises
        return str(err)
    return None if usable else where


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024], metavar="MB")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    settings = WorkerSettings.from_env()
    endpoints = VerbsEndpoints(PortChoice.from_settings(settings))
    reason = skip_reason(endpoints)
    if reason is not None:
        print(f"RDMA throughput benchmark skipped: {reason}")
        return 0

    from inference_worker.app import create_app

    rows = []
    with tempfile.TemporaryDirectory(prefix="model-swap-rdma-bench-") as tmp_name:
        tmp = Path(tmp_name)
        worker_settings = WorkerSettings(
            worker_host="127.0.0.1", worker_port=0, model_cache_dir=tmp / "cache"
        )
        app = create_app(worker_settings)
        cache = app.extensions["model_cache"]
        with (
            ServerThread(app) as worker,
            RdmaListener(cache, "127.0.0.1", 0, endpoints=endpoints) as listener,
        ):
            client = WorkerClient(worker.url, connect_timeout=5, read_timeout=600)
            transports = [
                HttpTransport(client),
                RdmaTransport(
                    client,
                    "127.0.0.1",
                    listener.port,
                    connect_timeout=5,
                    read_timeout=600,
                    endpoints=endpoints,
                ),
            ]
            for size_mb in args.sizes:
                path = write_tiny_model(tmp / f"push-{size_mb}.gguf", size_mb=size_mb)
                digest = file_digest(path)
                times: dict[str, list[float]] = {"raw": [], "http": [], "rdma": []}
                for _ in range(args.repeats):
                    times["raw"].append(raw_sendfile_seconds(path, tmp))
                    for transport in transports:
                        result = transport.push(path.name, path, digest=digest, load=False)
                        times[transport.name].append(result.seconds)
                        client.evict(path.name)
                nbytes = path.stat().st_size
                medians = {k: statistics.median(v) for k, v in times.items()}
                rows.append((nbytes, medians))
                path.unlink()
    print(f"RDMA push throughput ({endpoints.check_start(0, '')[1]}), median of {args.repeats}")
    print("| file | raw loopback sendfile | HTTP push | RDMA push | RDMA vs raw | RDMA vs HTTP |")
    print("|---|---:|---:|---:|---:|---:|")
    for nbytes, m in rows:

        def rate(seconds: float, nbytes: int = nbytes) -> str:
            return f"{nbytes / seconds / 1e6:.0f} MB/s"

        print(
            f"| {nbytes / 1e6:.0f} MB | {rate(m['raw'])} | {rate(m['http'])} | "
            f"{rate(m['rdma'])} | {m['raw'] / m['rdma']:.2f}x | {m['http'] / m['rdma']:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
