"""The shared start-up sequence of a service's command line.

Read settings from the environment (one line and exit 2 on a bad value),
configure logging, then serve the app in the foreground with the production
server (model_swap/serving.py) until SIGTERM, SIGINT or SIGHUP; exit 0 after
a clean stop.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from model_swap.logs import configure_logging
from model_swap.serving import ServeOptions, serve_production
from model_swap.settings import SettingsError

# gunicorn's exit code for a worker that could not boot: the master then stops too.
WORKER_BOOT_ERROR = 3


def run_service(
    name: str,
    load_settings: Callable[[], Any],
    create_app: Callable[[Any], Any],
    address: Callable[[Any], tuple[str, int]],
) -> int:
    """Run one service; ``create_app`` is called in the serving process, after the fork."""
    try:
        settings = load_settings()
    except SettingsError as err:
        print(f"{name}: invalid setting {err}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, getattr(settings, "log_format", "text"))
    host, port = address(settings)
    options = ServeOptions(
        host=host,
        port=port,
        threads=settings.server_threads,
        shutdown_grace=settings.shutdown_grace_seconds,
        write_timeout=settings.stream_write_timeout,
    )

    def build():
        # Some settings can only be checked by building the app (RDMA's locked-memory
        # limit, in the serving process): the same one line, not a traceback.
        try:
            return create_app(settings)
        except SettingsError as err:
            print(f"{name}: invalid setting {err}", file=sys.stderr, flush=True)
            os._exit(WORKER_BOOT_ERROR)

    try:
        serve_production(name, build, options)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else 1
    return 0
