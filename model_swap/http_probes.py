"""The probes the front server's loop answers itself, never queued behind the pool.

``GET /health`` (liveness): the process and its loop are alive, ``{"ok": true}``.
``GET /ready`` (readiness), when the app has a ``readiness`` extension (a quick,
non-blocking callable: ``() -> (ready, details)``): not while draining or while
the request queue is full, else what the app says. A service without that
extension has its own ``/ready`` route answer through the pool.
"""

from __future__ import annotations

import logging

from model_swap.http_parse import Head

logger = logging.getLogger(__name__)

HEALTH_PATH, READY_PATH = "/health", "/ready"


def probe_path(head: Head, has_readiness: bool) -> str | None:
    """The probe ``head`` asks for (a GET or HEAD without a body), or None."""
    if head.method not in ("GET", "HEAD") or head.chunked or head.content_length:
        return None
    path = head.target.partition("?")[0]
    if path == HEALTH_PATH or (path == READY_PATH and has_readiness):
        return path
    return None


def probe_answer(
    path: str, draining: bool, queue_full: bool, readiness, name: str
) -> tuple[int, dict]:
    """(status, payload) for the probe at ``path`` (see the module docstring)."""
    if path == HEALTH_PATH:
        return 200, {"ok": True}
    if draining:
        return 503, {"ready": False, "reason": "draining"}
    if queue_full:
        return 503, {"ready": False, "reason": "request queue full"}
    try:
        ready, details = readiness()
    except Exception:
        logger.exception("%s: the readiness check failed", name)
        return 503, {"ready": False, "reason": "readiness check failed"}
    return (200 if ready else 503), {"ready": bool(ready), **details}
