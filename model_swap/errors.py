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

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from model_swap.logs import current_request_id

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """Base of every error a client sees; subclasses fix status and type."""

    status = 500
    type = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        param: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        self.param = param  # the request field at fault, when there is one


class BadRequest(ApiError):
    status = 400
    type = "invalid_request"


class Unauthorized(ApiError):
    status = 401
    type = "unauthorized"


class Forbidden(ApiError):
    status = 403
    type = "forbidden"


class UnsupportedMediaType(ApiError):
    status = 415
    type = "unsupported_media_type"


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


def cause(err: BaseException) -> str:
    """What a client may be told about ``err``: an OS error's description (``Connection
    refused``) or, for anything else, only its class; never the exception's own text,
    which can carry paths, hosts or data (log the full error next to it)."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return f"unexpected {type(err).__name__}"


def error_body(status_type: str, message: str) -> dict:
    return {"error": {"message": message, "type": status_type}}


# Paths answered in OpenAI's error shape (the store's OpenAI-compatible API).
OPENAI_PREFIX = "/v1/"

# OpenAI's error ``type`` by status; our own type goes into ``code``.
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
}
_OPENAI_CODES = {"not_found": "model_not_found", "unauthorized": "invalid_api_key"}


def openai_error_body(
    status: int, status_type: str, message: str, param: str | None = None
) -> dict:
    """OpenAI's envelope: ``{"error": {"message", "type", "param", "code"}}``."""
    return {
        "error": {
            "message": message,
            "type": _OPENAI_TYPES.get(status, "server_error"),
            "param": param,
            "code": _OPENAI_CODES.get(status_type, status_type),
        }
    }


def _render(status: int, status_type: str, message: str, param: str | None = None):
    if request.path.startswith(OPENAI_PREFIX):
        response = jsonify(openai_error_body(status, status_type, message, param))
        if status == 503 and status_type == "rejected":
            # The policy refuses until something leaves the cache: tell the OpenAI SDK not
            # to retry (it would, twice, by default).
            response.headers["x-should-retry"] = "false"
        elif status == 503:
            # OpenAI clients back off on Retry-After: busy or unreachable is worth a retry.
            response.headers["Retry-After"] = "1"
    else:
        response = jsonify(error_body(status_type, message))
    response.status_code = status
    return response


def register_error_handlers(app: Flask) -> None:
    """Install the handlers that render every error as the JSON envelope."""

    @app.errorhandler(ApiError)
    def _api_error(err: ApiError):
        response = _render(err.status, err.type, err.message, err.param)
        response.headers.update(err.headers)
        return response

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException):
        if err.code == 404:
            # No route matched: not an unknown model (OpenAI's code for that is model_not_found).
            return _render(404, "unknown_route", f"no such route: {request.method} {request.path}")
        if err.code == 413:
            limit = request.max_content_length
            limit_text = f"{limit} bytes" if limit is not None else "its limit"
            return _render(
                413,
                "request_entity_too_large",
                f"the request body is larger than MAX_REQUEST_BYTES ({limit_text})",
            )
        name = (err.name or "error").lower().replace(" ", "_")
        return _render(err.code or 500, name, err.description or err.name)

    @app.errorhandler(Exception)
    def _unexpected(err: Exception):
        # The exception's text stays in the log: it may reveal paths, hosts or data.
        request_id = current_request_id() or uuid.uuid4().hex
        logger.exception("unhandled error (request id %s)", request_id)
        message = f"internal error; the server log has the details under request id {request_id}"
        response = _render(500, "internal_error", message)
        response.headers["X-Request-Id"] = request_id
        return response
