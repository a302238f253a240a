"""Observability: ``GET /metrics`` (Prometheus), ``GET /activity`` (recent requests and
swaps as JSON) and the dashboard (``GET /`` and its static files under ``/dashboard/``).

The dashboard is plain HTML, CSS and JavaScript in ``model_store_server/dashboard``
(no build step, nothing fetched from elsewhere); it polls ``/status`` and
``/activity`` and calls the ``/models/...`` endpoints for its buttons.
"""

from __future__ import annotations

import json
from pathlib import Path

from flask import Blueprint, Response, current_app, jsonify, request, send_from_directory
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from model_store_server.routes.openai import model_list
from model_store_server.routes.seed import swap_service
from model_store_server.views import store_status
from model_swap.errors import ApiError

DASHBOARD_DIR = Path(__file__).resolve().parent.parent / "dashboard"
# Served without a token even with API_KEYS: the page holds no data (it asks for a key
# when /status answers 401). /metrics joins them with METRICS_PUBLIC=1.
DASHBOARD_PATHS = ("/", "/dashboard/")
NO_CACHE = {"Cache-Control": "no-cache"}

observability = Blueprint("observability", __name__)


def metrics_response(registry) -> Response:
    """``registry`` in Prometheus' text exposition format."""
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


@observability.get("/metrics")
def metrics():
    return metrics_response(current_app.extensions["metrics"].registry)


@observability.get("/activity")
def activity():
    """Recent requests and swaps; ``?probe=worker`` also asks the worker for its report."""
    service = swap_service()
    body = current_app.extensions["metrics"].activity()
    if request.args.get("probe") == "worker":
        body["worker"] = probe_worker(service)
    return jsonify(body)


def probe_worker(service) -> dict:
    """Whether the first worker (the dashboard's) answers ``GET /status`` now, and what it
    says it holds."""
    first = service.fleet.first()
    try:
        report = first.client.status()
    except ApiError as err:
        return {"url": first.url, "reachable": False, "error": err.message}
    return {
        "url": first.url,
        "reachable": True,
        "resident": list(report.resident),
        "cached": report.cached,
        "kv": report.kv,  # kept prompts per resident model, and states saved on disk
    }


# Where the dashboard's page carries its first data (see ``dashboard``).
INITIAL_DATA = "<!-- initial data -->"


@observability.get("/")
def dashboard():
    """The dashboard's page. Without API_KEYS it carries the data of its first poll, so
    the first render needs no round trip; with keys it holds no data (it asks for one)."""
    page = (DASHBOARD_DIR / "index.html").read_text()
    service = swap_service()
    if not service.settings.api_keys:
        initial = {
            "status": store_status(service),
            "activity": current_app.extensions["metrics"].activity(),
            "models": model_list(service),
        }
        # No "<" at all: neither "</script>" nor "<!--" can change how the page parses.
        data = json.dumps(initial).replace("<", "\\u003c")
        page = page.replace(
            INITIAL_DATA, f'<script id="initial-data" type="application/json">{data}</script>'
        )
    return Response(page, content_type="text/html; charset=utf-8", headers=NO_CACHE)


@observability.get("/dashboard/<path:name>")
def dashboard_file(name: str):
    response = send_from_directory(DASHBOARD_DIR, name)
    response.headers.update(NO_CACHE)
    return response
