"""``inference-worker``: run the inference worker in the foreground (settings from env)."""

from __future__ import annotations

import sys

from inference_worker.config import WorkerSettings
from model_swap.service_main import run_service


def create_app(settings: WorkerSettings):
    # Imported here: the app is built in gunicorn's worker process, and the master
    # process need not load what the app needs (llama.cpp, on the worker).
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
