"""The seed's API: ``/user_request`` (raw prompt in, raw text out), ``/status``, ``/reset``.

Routes parse and validate, call ``SwapService``, and format the answer.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request

from model_store_server.core.orchestrator import SwapService
from model_store_server.views import store_status
from model_swap.errors import BadRequest
from model_swap.names import InvalidModelName, validate_model_name
from model_swap.requests_json import (
    parse_keep_alive,
    positive_int,
    prompt_text,
    read_json_object,
)

DEFAULT_MAX_TOKENS = 512

seed = Blueprint("seed", __name__)


def swap_service() -> SwapService:
    return current_app.extensions["swap_service"]


@seed.post("/user_request")
def user_request():
    service = swap_service()
    body = read_json_object(request)
    prompt = prompt_text(body, max_chars=service.settings.max_prompt_chars)
    try:
        model = validate_model_name(body.get("model"))
    except InvalidModelName as err:
        raise BadRequest(f"model: {err}") from None
    max_tokens = positive_int(body, "max_tokens", default=DEFAULT_MAX_TOKENS)
    keep_alive = parse_keep_alive(body.get("keep_alive"))

    served = service.serve(
        model, {"prompt": prompt, "max_tokens": max_tokens}, keep_alive=keep_alive
    )
    response = Response(served.stream, mimetype="text/plain")
    response.headers.update(served.headers())
    response.call_on_close(served.close)
    return response


@seed.post("/reset")
@seed.post("/admin/reset")  # the name the seed's later smoke scripts use
def reset():
    service = swap_service()
    return jsonify(evicted=service.reset(), status=store_status(service))


@seed.get("/status")
def status():
    return jsonify(store_status(swap_service()))


@seed.get("/healthz")
@seed.get("/health")  # what Kubernetes probes and load generators (guidellm) ask for
def healthz():
    return jsonify(ok=True)


@seed.get("/ready")  # the front server's loop answers it first (model_store_server/readiness.py)
def ready():
    is_ready, details = current_app.extensions["readiness"]()
    return jsonify(ready=is_ready, **details), 200 if is_ready else 503
