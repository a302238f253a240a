"""The one JSON error envelope both services answer with.

Every failure a client can see is an ``ApiError`` subclass; one Flask error
handler turns it into ``{"error": {"message": ..., "type": ...}}`` with the
class's status code. Werkzeug's own HTTP errors (404 for unknown routes, 405,
413 ...) are wrapped into the same envelope so clients parse one shape. Any
other exception is a 500 whose message carries only a request id (also in
the ``X-Request-Id`` header); the exception itself is logged under that id.
"""

from __future__ import annotations

import logging
import uuid

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """Base of every error a client sees; subclasses fix status and type."""

    status = 500
    type = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(ApiError):
    status = 400
    type = "invalid_request"


class Unauthorized(ApiError):
    status = 401
    type = "unauthorized"


class NotFound(ApiError):
    status = 404
    type = "not_found"


class Conflict(ApiError):
    status = 409
    type = "conflict"


class PayloadInvalid(ApiError):
    status = 422
    type = "unprocessable"


class InsufficientStorage(ApiError):
    """The worker's disk cannot hold the upload."""

    status = 507
    type = "insufficient_storage"


class WorkerFailed(ApiError):
    """The worker answered, but with a failure (load error, bad upload...)."""

    status = 502
    type = "worker_failed"


class Unavailable(ApiError):
    """Refused for now: policy rejection, worker unreachable, or busy."""

    status = 503
    type = "unavailable"

    def __init__(self, message: str, *, retry_after: int | None = None, type: str | None = None):
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        super().__init__(message, headers=headers)
        if type is not None:
            self.type = type


def error_body(status_type: str, message: str) -> dict:
    return {"error": {"message": message, "type": status_type}}


def register_error_handlers(app: Flask) -> None:
    """Install the handlers that render every error as the JSON envelope."""

    @app.errorhandler(ApiError)
    def _api_error(err: ApiError):
        response = jsonify(error_body(err.type, err.message))
        response.status_code = err.status
        response.headers.update(err.headers)
        return response

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException):
        name = (err.name or "error").lower().replace(" ", "_")
        response = jsonify(error_body(name, err.description or err.name))
        response.status_code = err.code or 500
        return response

    @app.errorhandler(Exception)
    def _unexpected(err: Exception):
        # The exception's text stays in the log: it may reveal paths, hosts or data.
        request_id = uuid.uuid4().hex
        logger.exception("unhandled error (request id %s)", request_id)
        message = f"internal error; the server log has the details under request id {request_id}"
        response = jsonify(error_body("internal_error", message))
        response.status_code = 500
        response.headers["X-Request-Id"] = request_id
        return response
