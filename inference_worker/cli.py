"""``inference-worker``: run the inference worker in the foreground (settings from env)."""

from __future__ import annotations

import os
import sys

from inference_worker.config import WorkerSettings
from model_swap.service_main import run_service


def create_app(settings: WorkerSettings):
    if settings.cpu_affinity:
        # In the serving process, before llama.cpp starts its threads (they inherit it).
        os.sched_setaffinity(0, settings.cpu_affinity)
    # Imported here: settings are checked (and an error reported) before the app
    # module and what it needs (llama.cpp, on the worker) are loaded.
    from inference_worker.app import create_app

    return create_app(settings)


def main() -> int:
    return run_service(
        "inference-worker",
        WorkerSettings.from_env,
        create_app,
        lambda s: (s.worker_host, s.worker_port),
    )


if __name__ == "__main__":
    sys.exit(main())
