"""The shared start-up sequence of a service's command line.

Read settings from the environment (one line and exit 2 on a bad value, also
for one only building the app can check), configure logging, then serve the
app in the foreground with the production server (model_swap/serving.py)
until SIGTERM, SIGINT or SIGHUP; exit 0 after a clean stop.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

from model_swap.logs import configure_logging
from model_swap.serving import ServeOptions, serve_production
from model_swap.settings import SettingsError


def service_command(
    name: str,
    load_settings: Callable[[], Any],
    app_module: str,
    address: Callable[[Any], tuple[str, int]],
    prepare: Callable[[Any], None] | None = None,
) -> Callable[[], int]:
    """A service's command-line ``main``: ``run_service`` with the app built by
    ``app_module``'s ``create_app(settings)``, after ``prepare(settings)`` if given.

    The app module is imported in the serving process, once the settings are
    checked, so a bad setting is reported before the app and what it needs
    (llama.cpp, on the worker) are loaded.
    """

    def create_app(settings):
        if prepare is not None:
            prepare(settings)
        return importlib.import_module(app_module).create_app(settings)

    def main() -> int:
        return run_service(name, load_settings, create_app, address)

    return main


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
        header_timeout=settings.header_timeout,
        keepalive_timeout=settings.keepalive_timeout,
        max_connections=settings.max_connections,
        min_upload_rate=settings.min_upload_rate,
        min_download_rate=settings.min_download_rate,
        max_queued=settings.max_queued_requests,
    )

    try:
        serve_production(name, lambda: create_app(settings), options)
    except SettingsError as err:
        # Some settings can only be checked by building the app (RDMA's locked-memory
        # limit): the same one line, not a traceback.
        print(f"{name}: invalid setting {err}", file=sys.stderr, flush=True)
        return 2
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else 1
    return 0
