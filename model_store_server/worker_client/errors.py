"""What a call to a worker can fail with, as the store's errors.

An unreachable worker is ``WorkerUnavailable`` (503), one that cannot prove
it holds WORKER_TOKEN ``WorkerUnproven`` (503), one that answers with an
error ``WorkerError`` (502) carrying the worker's status and message. A file
that changes while it is pushed is ``SourceChanged`` (the store's problem,
an OSError).
"""

from __future__ import annotations

import logging

from model_swap.errors import Unavailable, WorkerFailed

logger = logging.getLogger("model_store_server.worker_client")


class WorkerUnavailable(Unavailable):
    """The worker could not be reached (connection refused or timed out)."""

    def __init__(self, message: str):
        super().__init__(message, retry_after=1, type="worker_unavailable")


class WorkerUnproven(Unavailable):
    """The worker could not prove it holds WORKER_TOKEN: nothing is sent to it."""

    def __init__(self, message: str):
        super().__init__(message, retry_after=1, type="worker_unproven")


class WorkerError(WorkerFailed):
    """The worker answered with an error status."""

    def __init__(self, message: str, *, worker_status: int | None = None, worker_message: str = ""):
        super().__init__(message)
        self.worker_status = worker_status
        self.worker_message = worker_message or message


class SourceChanged(OSError):
    """The file being pushed changed size while it was sent."""


def broke_off(what: str, err: BaseException) -> WorkerError:
    """The client's fixed message for a call that failed in transit; the detail is logged."""
    logger.warning("worker call %s failed: %r", what, err)
    return WorkerError(f"the worker connection broke off during {what}")
