"""The shared start-up sequence of a service's command line.

Read settings from the environment (one line and exit 2 on a bad value),
configure logging, build the app and serve it in the foreground until
SIGINT/SIGTERM.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from model_swap.logs import configure_logging
from model_swap.serving import serve_foreground
from model_swap.settings import SettingsError


def run_service(
    name: str,
    load_settings: Callable[[], Any],
    create_app: Callable[[Any], Any],
    address: Callable[[Any], tuple[str, int]],
) -> int:
    try:
        settings = load_settings()
    except SettingsError as err:
        print(f"{name}: invalid setting {err}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    app = create_app(settings)
    host, port = address(settings)
    serve_foreground(app, host, port, name)
    return 0
