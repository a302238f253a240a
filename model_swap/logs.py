"""Logging set-up shared by the services.

Ordinary log lines go through ``logging`` with a timestamped format. The
seed's documented console lines (``[/user_request] ...`` and ``[infer] ...``)
go through the ``CONSOLE`` logger, printed exactly as the message, so scripts
can parse them. With ``LOG_FORMAT=json`` every line (console lines included)
is one JSON object instead, carrying the id of the request it belongs to
(``request_id``: the client's ``X-Request-Id`` if it sent one, else a new one).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import uuid
from datetime import UTC, datetime

CONSOLE = logging.getLogger("model_swap.console")
LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# The request the current thread (or the context copied from it) is serving.
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "model_swap_request_id", default=None
)


def current_request_id() -> str | None:
    return REQUEST_ID.get()


def install_request_ids(app) -> None:
    """Give each request of ``app`` an id for the log lines it causes (a ``before_request``)."""
    from flask import request

    @app.before_request
    def _request_id():
        presented = request.headers.get("X-Request-Id", "")
        valid = 0 < len(presented) <= 64 and all(c.isalnum() or c in "-_." for c in presented)
        REQUEST_ID.set(presented if valid else uuid.uuid4().hex)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message, request_id (and exception)."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": REQUEST_ID.get(),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


def configure_logging(level: str = "INFO", log_format: str = "text") -> None:
    """Send log records to stderr and the console lines, bare, to stdout (``text``),
    or each as one JSON object per line (``json``)."""
    json_lines = log_format == "json"
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "_model_swap", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler._model_swap = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    root.setLevel(level)
    if not CONSOLE.handlers:
        console_handler = logging.StreamHandler(sys.stdout)
        CONSOLE.addHandler(console_handler)
    for console_handler in CONSOLE.handlers:
        console_handler.setFormatter(
            JsonFormatter() if json_lines else logging.Formatter("%(message)s")
        )
    CONSOLE.setLevel(logging.INFO)
    CONSOLE.propagate = False
    # werkzeug logs every request at INFO; keep it for errors only.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    logging.getLogger("gguf").setLevel(logging.WARNING)
