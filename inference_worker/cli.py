"""``inference-worker``: run the inference worker in the foreground (settings from env)."""

from __future__ import annotations

import os
import sys

from inference_worker.config import WorkerSettings
from inference_worker.huge_pages import reexec_with_huge_pages
from model_swap.service_main import service_command


def pin_cpus(settings: WorkerSettings) -> None:
    """CPU_AFFINITY, in the serving process before llama.cpp starts its threads (they
    inherit it)."""
    if settings.cpu_affinity:
        os.sched_setaffinity(0, settings.cpu_affinity)


_serve = service_command(
    "inference-worker",
    WorkerSettings.from_env,
    "inference_worker.app",
    lambda s: (s.worker_host, s.worker_port),
    prepare=pin_cpus,
)


def main() -> int:
    """Start the worker (first re-executed once with huge pages for llama.cpp's buffers)."""
    reexec_with_huge_pages()
    return _serve()


if __name__ == "__main__":
    sys.exit(main())
