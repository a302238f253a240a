"""Logging set-up shared by the services.

Ordinary log lines go through ``logging`` with a timestamped format. The
seed's documented console lines (``[/user_request] ...`` and ``[infer] ...``)
go through the ``CONSOLE`` logger, printed exactly as the message, so scripts
can parse them.
"""

from __future__ import annotations

import logging
import sys

CONSOLE = logging.getLogger("model_swap.console")


def configure_logging(level: str = "INFO") -> None:
    """Send log records to stderr and the console lines, bare, to stdout."""
    root = logging.getLogger()
    if not any(getattr(h, "_model_swap", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler._model_swap = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    if not CONSOLE.handlers:
        console_handler = logging.StreamHandler(sys.stdout)
        console_handler.setFormatter(logging.Formatter("%(message)s"))
        CONSOLE.addHandler(console_handler)
    CONSOLE.setLevel(logging.INFO)
    CONSOLE.propagate = False
    # werkzeug logs every request at INFO; keep it for errors only.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    logging.getLogger("gguf").setLevel(logging.WARNING)
