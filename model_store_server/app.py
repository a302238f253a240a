"""The model store server's Flask application factory: assembles the route blueprints.

``routes/seed.py`` is the seed's API (``/user_request``, ``/status``, ``/reset``),
``routes/openai.py`` the OpenAI-compatible API under ``/v1``, ``routes/models.py``
the explicit control of the worker's tiers (``/models/...``), ``routes/observability.py``
``/metrics``, ``/activity`` and the dashboard at ``/``, ``routes/ollama.py`` the
Ollama-compatible API under ``/api`` (unless ``OLLAMA_API=0``).
"""

from __future__ import annotations

from flask import Flask

from model_store_server.access import install_access
from model_store_server.config import StoreSettings
from model_store_server.control import ModelControl
from model_store_server.core.orchestrator import SwapService
from model_store_server.metrics import StoreMetrics
from model_store_server.prewarmer import Prewarmer
from model_store_server.readiness import store_readiness
from model_store_server.routes.models import models
from model_store_server.routes.observability import DASHBOARD_PATHS, observability
from model_store_server.routes.ollama import ollama
from model_store_server.routes.openai import openai
from model_store_server.routes.seed import seed
from model_store_server.routes.workers import workers
from model_store_server.views import LogLines
from model_swap.errors import register_error_handlers
from model_swap.logs import install_request_ids


def create_app(settings: StoreSettings | None = None, *, clock=None, resolver=None) -> Flask:
    """Build a store app with its own policies and worker views (no global state).
    ``resolver(host, port)``: the addresses of a ``dns+`` WORKER_URLS (tests inject it)."""
    settings = settings or StoreSettings.from_env()
    options = {"clock": clock, "resolver": resolver}
    service = SwapService(settings, **{k: v for k, v in options.items() if v is not None})

    app = Flask(__name__)
    app.config["SETTINGS"] = settings
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.extensions["swap_service"] = service
    # What happened is published once; the metrics and the console lines subscribe.
    metrics = StoreMetrics(service)
    service.events.subscribe(metrics.handle)
    service.events.subscribe(LogLines(settings))
    app.extensions["metrics"] = metrics
    control = ModelControl(service)
    app.extensions["model_control"] = control
    app.extensions["stop"] = control.stop
    # GET /ready: answered by the front server's loop (and by routes/seed.py elsewhere).
    app.extensions["readiness"] = lambda: store_readiness(service.fleet)
    control.start(settings.preload_models)
    if settings.prewarm != "off":
        prewarmer = Prewarmer(
            service, settings, registry=metrics.registry, **({"clock": clock} if clock else {})
        )
        service.events.subscribe(prewarmer.handle)
        service.explain_extras["prewarm"] = prewarmer.explain
        app.extensions["prewarmer"] = prewarmer
        app.extensions["stop"] = lambda: (prewarmer.stop(), control.stop())
        prewarmer.start()
    register_error_handlers(app)
    install_request_ids(app)
    open_paths = (*DASHBOARD_PATHS, *(("/metrics",) if settings.metrics_public else ()))
    install_access(app, settings, open_paths)
    app.register_blueprint(seed)
    app.register_blueprint(openai)
    app.register_blueprint(models)
    app.register_blueprint(observability)
    app.register_blueprint(workers)
    if settings.ollama_api:
        app.register_blueprint(ollama)
    return app
