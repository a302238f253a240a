"""The probes the front server's loop answers itself, never queued behind the pool.

``GET /health`` (liveness): the process and its loop are alive, ``{"ok": true}``.
``GET /ready`` (readiness), when the app has a ``readiness`` extension (a quick,
non-blocking callable: ``() -> (ready, details)``): not while draining or while
the request queue is full, else what the app says. A service without that
extension has its own ``/ready`` route answer through the pool.
"""

from __future__ import annotations

import logging
import time

from model_swap.http_parse import Head
from model_swap.http_request import probe_response

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


def answer_probe(conn, limits, draining: bool, queue_full: bool, readiness, name: str):
    """Answer the probe whose head ``conn`` holds, from the loop: None if it is not a
    probe, True once answered (the connection keeps what followed it, with a new
    deadline), False if the connection should be closed (answer not taken, or no
    keep-alive)."""
    head = conn.head
    path = probe_path(head, readiness is not None)
    if path is None:
        return None
    keep = head.keep_alive and not draining
    status, payload = probe_answer(path, draining, queue_full, readiness, name)
    data = probe_response(status, payload, keep, head.method == "HEAD")
    del conn.buffer[: conn.head_end]
    conn.head, conn.parser, conn.fed = None, None, 0
    try:
        sent = conn.sock.send(data)
    except (BlockingIOError, InterruptedError):
        sent = 0
    except OSError:
        sent = -1
    if sent != len(data) or not keep:
        return False
    conn.deadline = time.monotonic() + (
        limits.header_timeout if conn.buffer else limits.keepalive_timeout
    )
    return True
