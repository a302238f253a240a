"""The push into a worker from two checkouts side by side, against a raw socket, in one run.

    uv run python benchmarks/push_compare.py /path/to/main-checkout .
    uv run python benchmarks/push_compare.py --sizes 512 1024 --repeats 9 ../main .

Starts one worker process per checkout (``python -m inference_worker.cli`` run from
that checkout, so its own code serves), then, for each file size, takes turns:
a raw loopback ``sendfile`` into a file (no HTTP, no hashing: the baseline of
benchmarks/suite.py section 1) and the store's own HTTP push (``HttpTransport``,
a sized body sent with sendfile, ``X-Model-Digest`` of ``--digest``) into each
worker; the order rotates every round. Prints the medians, each push's ratio
to the raw socket and the CPU seconds each costs (user + system, from /proc
and getrusage: unlike the wall time, not stretched by other work on the
machine): the worker's and the sending side's (this process: the store's
``HttpTransport``) per push, and both ends of the raw socket together (they
run in this process). On a busy machine the wall ratio follows the CPU ratio.
Nothing is written but temporary files; loopback only.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import free_port, median, raw_sendfile_seconds, wait_until_healthy  # noqa: E402

from model_store_server.transport.http import HttpTransport  # noqa: E402
from model_store_server.worker_client import WorkerClient  # noqa: E402
from model_swap.digest import TRANSFER_ALGORITHM, file_digest  # noqa: E402
from model_swap.tiny_models import write_tiny_model  # noqa: E402

NAME = "bench-push-compare.gguf"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """User + system CPU seconds of this process (every thread) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def start_worker(checkout: Path, workdir: Path, index: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        **os.environ,
        "WORKER_HOST": "127.0.0.1",
        "WORKER_PORT": str(port),
        "MODEL_CACHE_DIR": str(workdir / f"cache-{index}"),
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(checkout),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "inference_worker.cli"],
        cwd=checkout,
        env=env,
        stdout=open(workdir / f"worker-{index}.log", "w"),  # noqa: SIM115 - lives with it
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(url, process=process, timeout=120, describe=str(checkout))
    return process, url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "checkouts", type=Path, nargs="+", help="checkouts whose workers to push to"
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024], metavar="MB")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--digest", default=TRANSFER_ALGORITHM, choices=["blake3", "sha256"])
    args = parser.parse_args()
    checkouts = [path.resolve() for path in args.checkouts]
    with tempfile.TemporaryDirectory(prefix="push-compare-") as tmp_name:
        tmp = Path(tmp_name)
        workers = {}
        try:
            for index, checkout in enumerate(checkouts):
                process, url = start_worker(checkout, tmp, index)
                client = WorkerClient(url, connect_timeout=5, read_timeout=600)
                workers[f"{index}:{checkout}"] = (process, client, HttpTransport(client))
            for size_mb in args.sizes:
                path = write_tiny_model(tmp / f"push-{size_mb}.gguf", size_mb=size_mb)
                digest = file_digest(path, args.digest)
                seconds: dict[str, list[float]] = {"raw": [], **{name: [] for name in workers}}
                cpu: dict[str, list[float]] = {name: [] for name in workers}
                sender: dict[str, list[float]] = {name: [] for name in seconds}
                names = list(seconds)
                for round_ in range(args.repeats):
                    for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                        own = own_cpu_seconds()
                        if name == "raw":
                            seconds[name].append(raw_sendfile_seconds(path, tmp))
                            sender[name].append(own_cpu_seconds() - own)
                            continue
                        process, client, transport = workers[name]
                        before = cpu_seconds(process.pid)
                        result = transport.push(NAME, path, digest=digest, load=False)
                        sender[name].append(own_cpu_seconds() - own)
                        seconds[name].append(result.seconds)
                        cpu[name].append(cpu_seconds(process.pid) - before)
                        client.evict(NAME)
                nbytes = path.stat().st_size
                raw = median(seconds["raw"])
                print(f"\n{nbytes / 1e6:.0f} MB, {args.digest}, median of {args.repeats}:")
                for name, values in seconds.items():
                    wall = median(values)
                    line = f"  {name}: {wall * 1000:.0f} ms ({nbytes / wall / 1e6:.0f} MB/s)"
                    if name == "raw":
                        line += f", CPU {median(sender[name]):.2f} s (both ends)"
                    else:
                        line += (
                            f", {raw / wall:.2f}x raw, CPU: worker {median(cpu[name]):.2f} s"
                            f" + sender {median(sender[name]):.2f} s"
                        )
                    print(line + f"  [{', '.join(f'{v * 1000:.0f}' for v in values)}]")
                path.unlink()
        finally:
            for process, client, _ in workers.values():
                client.close()
                process.terminate()
                process.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
