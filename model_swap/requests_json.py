"""Reading and checking JSON request bodies the same way in both services."""

from __future__ import annotations

from flask import Request

from model_swap.errors import BadRequest
from model_swap.generation import check_text


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
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(f"{field} must be a positive integer", param=field)
    return value


def prompt_text(body: dict, *, max_chars: int) -> str:
    """``body["prompt"]``: a non-empty string of at most ``max_chars`` characters."""
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string", param="prompt")
    if not prompt.strip():
        raise BadRequest("prompt must not be empty", param="prompt")
    if len(prompt) > max_chars:
        raise BadRequest(
            f"prompt is {len(prompt)} characters; the limit is {max_chars}", param="prompt"
        )
    return check_text(prompt, "prompt")
