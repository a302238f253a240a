"""What a request to the worker says about the model it carries or names: its headers, checked.

Each function reads Flask's current request and raises ``BadRequest`` (400 in the
error envelope) naming the header that is wrong.
"""

from __future__ import annotations

from flask import request

from model_swap.digest import InvalidDigest, parse_digest
from model_swap.errors import BadRequest
from model_swap.names import InvalidModelName, validate_model_name


def model_name_header() -> str:
    """The model name an upload or a push names in X-Model-Name, checked."""
    name = request.headers.get("X-Model-Name")
    if name is None:
        raise BadRequest("the X-Model-Name header is required")
    try:
        return validate_model_name(name)
    except InvalidModelName as err:
        raise BadRequest(f"X-Model-Name: {err}") from None


def model_name_arg(name: str) -> str:
    """A model name from the URL path, checked."""
    try:
        return validate_model_name(name)
    except InvalidModelName as err:
        raise BadRequest(str(err)) from None


def expected_size() -> int | None:
    """The bytes an upload announces (X-Model-Size, else its Content-Length)."""
    raw = request.headers.get("X-Model-Size")
    if raw is None:
        return request.content_length
    try:
        size = int(raw)
    except ValueError:
        raise BadRequest("X-Model-Size must be an integer") from None
    if size < 0:
        raise BadRequest("X-Model-Size must not be negative")
    return size


def expected_digest() -> str | None:
    """``algorithm:hex`` from X-Model-Digest, or ``sha256:hex`` from X-Model-Sha256."""
    digest, sha256 = request.headers.get("X-Model-Digest"), request.headers.get("X-Model-Sha256")
    if digest is not None and sha256 is not None:
        raise BadRequest("send X-Model-Digest or X-Model-Sha256, not both")
    if digest is None and sha256 is None:
        return None
    header = "X-Model-Digest" if digest is not None else "X-Model-Sha256"
    try:
        return parse_digest(digest if digest is not None else f"sha256:{sha256}")
    except InvalidDigest as err:
        raise BadRequest(f"{header}: {err}") from None
