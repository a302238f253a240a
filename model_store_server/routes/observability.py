"""Observability: ``GET /metrics`` (Prometheus), ``GET /activity`` (recent requests and
swaps as JSON) and the dashboard (``GET /`` and its static files under ``/dashboard/``).

The dashboard is plain HTML, CSS and JavaScript in ``model_store_server/dashboard``
(no build step, nothing fetched from elsewhere); it polls ``/status`` and
``/activity`` and calls the ``/models/...`` endpoints for its buttons.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, jsonify, send_from_directory
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from model_store_server.routes.seed import swap_service

DASHBOARD_DIR = Path(__file__).resolve().parent.parent / "dashboard"
# Served without a token even with API_KEYS: the page holds no data (it asks for a key
# when /status answers 401). /metrics joins them with METRICS_PUBLIC=1.
DASHBOARD_PATHS = ("/", "/dashboard/")

observability = Blueprint("observability", __name__)


def metrics_response(registry) -> Response:
    """``registry`` in Prometheus' text exposition format."""
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


@observability.get("/metrics")
def metrics():
    return metrics_response(swap_service().metrics.registry)


@observability.get("/activity")
def activity():
    return jsonify(swap_service().metrics.activity())


@observability.get("/")
def dashboard():
    response = send_from_directory(DASHBOARD_DIR, "index.html")
    response.headers["Cache-Control"] = "no-cache"
    return response


@observability.get("/dashboard/<path:name>")
def dashboard_file(name: str):
    response = send_from_directory(DASHBOARD_DIR, name)
    response.headers["Cache-Control"] = "no-cache"
    return response
