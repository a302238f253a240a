"""The worker's guard against web pages, when it holds no WORKER_TOKEN.

A worker with a token refuses every unsigned request (``model_swap.auth``). Without
one it is as open as the store with no keys, and applies the store's rule
(``model_store_server/access.py``, shared in ``model_swap.browsers``):

- DNS rebinding: a ``Host`` that is not an IP address, ``localhost``, WORKER_HOST
  or in ``ALLOWED_HOSTS`` gets 403.
- A state-changing request from another site's page (its ``Origin``) gets 403.
- A body must be ``application/json`` or ``application/octet-stream`` (or untyped
  from no browser; 415 otherwise), but for the uploads, which may carry any type:
  they refuse a request without ``X-Model-Name``, a header a page cannot send
  across sites without a CORS preflight, which the worker never grants.
"""

from __future__ import annotations

from flask import Flask, request

from inference_worker.config import WorkerSettings
from model_swap import browsers
from model_swap.auth import OPEN_PATHS
from model_swap.errors import Forbidden

BODY_TYPES = frozenset({"application/json", "application/octet-stream"})
# Routes that refuse a request without X-Model-Name (no page sends it unpreflighted).
UPLOAD_PATHS = frozenset({"/load_model_from_store", "/cache_model"})


def install_browser_guard(app: Flask, settings: WorkerSettings) -> None:
    """Install the checks of the module docstring (nothing when WORKER_TOKEN is set)."""
    if settings.worker_token:
        return
    names = ("localhost", settings.worker_host, *settings.allowed_hosts)

    @app.before_request
    def _refuse_web_pages():
        if request.path in OPEN_PATHS:
            return None
        if not browsers.host_allowed(request.host, names):
            raise Forbidden(f"Host {request.host!r} is not this worker's (add it to ALLOWED_HOSTS)")
        browsers.refuse_web_pages(request, BODY_TYPES, UPLOAD_PATHS)
        return None
