"""Reading and checking JSON request bodies the same way in both services."""

from __future__ import annotations

from flask import Request

from model_swap.errors import BadRequest


def read_json_object(request: Request) -> dict:
    """The request body as a JSON object, or BadRequest naming what is wrong."""
    data = request.get_json(silent=True, force=True)
    if data is None:
        raise BadRequest("request body must be valid JSON")
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


def positive_int(body: dict, field: str, *, default: int) -> int:
    """``body[field]`` as a positive integer (booleans and floats refused), or ``default``."""
    value = body.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{field} must be a positive integer")
    if value < 1:
        raise BadRequest(f"{field} must be a positive integer")
    return value
