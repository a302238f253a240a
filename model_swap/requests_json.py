"""Reading and checking JSON request bodies the same way in both services."""

from __future__ import annotations

import json
import math
import re

from flask import Request

from model_swap.errors import BadRequest
from model_swap.generation import check_text

# Deepest nesting of arrays and objects accepted in a request body. What the parser
# accepts (up to about 1,000 levels) could still exhaust the recursion limit of code
# that walks, copies or prints the value; no request of ours needs more than a few.
MAX_JSON_DEPTH = 128
_TOO_DEEP = f"request body is nested more than {MAX_JSON_DEPTH} levels deep"


def _depth_exceeds(value: object, limit: int) -> bool:
    """Whether ``value`` nests lists and dicts more than ``limit`` deep (no recursion;
    visits containers only, so a long string costs nothing)."""
    stack = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def read_json_object(request: Request) -> dict:
    """The request body as a JSON object, or BadRequest naming what is wrong.

    Whatever the parser cannot handle is bad input, never a server error: text
    that is not JSON or not UTF-8 (ValueError, which includes integers too long to
    convert) and nesting deeper than the parser's recursion limit (RecursionError;
    about 1,000 levels).
    """
    try:
        data = json.loads(request.get_data(cache=False))
    except RecursionError:
        raise BadRequest(_TOO_DEEP) from None
    except ValueError:
        raise BadRequest("request body must be valid JSON") from None
    if _depth_exceeds(data, MAX_JSON_DEPTH):
        raise BadRequest(_TOO_DEEP)
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


_DURATION = re.compile(r"^\s*(-?)((?:\d+(?:\.\d+)?(?:ms|s|m|h))+|\d+(?:\.\d+)?)\s*$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)?")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_keep_alive(value: object) -> float | None:
    """A request's ``keep_alive``: seconds as a number, or a string like ``30s``, ``5m``,
    ``1h30m`` (a bare number in a string is seconds). 0 unloads right after the answer;
    any negative value keeps the model until capacity needs its place (-1). None or
    absent: the policy decides."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise BadRequest("keep_alive must be a number of seconds or a duration", param="keep_alive")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = sum(
            float(number) * _UNIT_SECONDS[unit or None]
            for number, unit in _DURATION_PART.findall(match.group(2))
        )
        if match.group(1):
            seconds = -seconds
    else:
        raise BadRequest(
            "keep_alive must be a number of seconds or a duration such as 30s, 5m or 1h "
            "(0: unload after the answer, -1: keep until evicted by capacity)",
            param="keep_alive",
        )
    if not math.isfinite(seconds):
        raise BadRequest("keep_alive must be finite", param="keep_alive")
    if seconds > MAX_KEEP_ALIVE_SECONDS:
        raise BadRequest(
            f"keep_alive must be at most {MAX_KEEP_ALIVE_SECONDS} seconds (1 year); "
            "use -1 to keep the model until capacity needs its place",
            param="keep_alive",
        )
    return -1.0 if seconds < 0 else seconds


# The longest keep_alive (1 year): an expiry time that far ahead still fits every clock and
# date the store computes (1e15 s overflowed /api/ps's expires_at for everyone).
MAX_KEEP_ALIVE_SECONDS = 365 * 24 * 3600
