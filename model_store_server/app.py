"""The model store server's HTTP routes (Flask application factory).

Routes parse and validate, call ``SwapService``, and format the answer.
"""

from __future__ import annotations

from flask import Flask, Response, jsonify, request

from model_store_server.config import StoreSettings
from model_store_server.swap_service import SwapService
from model_swap.auth import require_bearer
from model_swap.errors import BadRequest, register_error_handlers
from model_swap.names import InvalidModelName, validate_model_name
from model_swap.requests_json import positive_int, prompt_text, read_json_object

DEFAULT_MAX_TOKENS = 512


def create_app(settings: StoreSettings | None = None, *, clock=None) -> Flask:
    """Build a store app with its own policy and worker view (no global state)."""
    settings = settings or StoreSettings.from_env()
    service = SwapService(settings, **({"clock": clock} if clock else {}))

    app = Flask(__name__)
    app.config["SETTINGS"] = settings
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.extensions["swap_service"] = service
    service.sync_in_background()
    register_error_handlers(app)
    require_bearer(app, settings.api_keys, realm="model-store")

    @app.post("/user_request")
    def user_request():
        body = read_json_object(request)
        prompt = prompt_text(body, max_chars=settings.max_prompt_chars)
        try:
            model = validate_model_name(body.get("model"))
        except InvalidModelName as err:
            raise BadRequest(f"model: {err}") from None
        max_tokens = positive_int(body, "max_tokens", default=DEFAULT_MAX_TOKENS)

        served = service.serve(model, prompt, max_tokens)
        response = Response(served.stream, mimetype="text/plain")
        response.headers.update(served.decision.headers())
        if served.model:
            response.headers["X-Model"] = served.model
        if served.push:
            response.headers["X-Transport"] = served.push.transport
        response.headers["X-Accel-Buffering"] = "no"
        response.call_on_close(served.close)
        return response

    @app.post("/reset")
    def reset():
        return jsonify(evicted=service.reset(), status=service.status())

    @app.get("/status")
    def status():
        return jsonify(service.status())

    @app.get("/healthz")
    def healthz():
        return jsonify(ok=True)

    return app
