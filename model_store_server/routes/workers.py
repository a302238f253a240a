"""The store's workers: ``GET /workers``, ``POST /workers/<id>/drain`` and ``/undrain``.

``<id>`` is a worker's ``host:port`` (as in ``/status`` ``workers``), its URL
or its index there. A drain places nothing new on the worker and answers
once nothing generates, waits or swaps there (or after ``?timeout=``
seconds, default SWAP_WAIT_TIMEOUT, with ``"drained": false``): what a
Kubernetes ``preStop`` hook waits for.
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from model_store_server.routes.seed import swap_service
from model_store_server.views import worker_status
from model_swap.errors import BadRequest

workers = Blueprint("workers", __name__, url_prefix="/workers")


def _control():
    return current_app.extensions["model_control"]


@workers.get("")
def listing():
    service = swap_service()
    return jsonify(workers=[worker_status(service, node) for node in service.fleet.nodes])


@workers.post("/<path:worker>/drain")
def drain(worker: str):
    default = swap_service().settings.swap_wait_timeout
    try:
        timeout = float(request.args.get("timeout", default))
    except ValueError:
        timeout = -1.0
    if not 0 <= timeout <= 3600:
        raise BadRequest("timeout: must be a number of seconds from 0 to 3600", param="timeout")
    return jsonify(_control().drain(worker, timeout))


@workers.post("/<path:worker>/undrain")
def undrain(worker: str):
    return jsonify(_control().undrain(worker))
