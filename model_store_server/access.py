"""Who may do what on the store: client keys, admin keys, and browsers.

- ``API_KEYS`` and ``ADMIN_KEYS`` (``model_swap.auth.require_bearer``): with
  any key configured, every route but the probes and the dashboard's page
  needs one of either. The administrative routes (``ADMIN_PATHS``: model and
  worker control, reset) need an admin key: a client key gets 403 there and
  keeps generating. ``DRAIN_KEYS`` open ``POST /workers/<id>/drain`` and
  nothing else (a worker pod's preStop hook holds one, not a client key). With
  no key at all the store is as open as before (it listens on loopback by
  default).
- No cross-site driving (``model_swap.browsers``): a state-changing request from
  a browser (it carries ``Origin``) must come from the store's own origin (403),
  and a body must be ``application/json`` (415; a cross-site form or ``no-cors``
  fetch cannot send that type without a preflight), or untyped from no browser.
- DNS rebinding: with no keys, a ``Host`` that is not an IP address,
  ``localhost``, STORE_HOST or in ``ALLOWED_HOSTS`` is refused (403).
"""

from __future__ import annotations

import hmac

from flask import Flask, request

from model_store_server.config import StoreSettings
from model_swap import browsers
from model_swap.auth import OPEN_PATHS, presented_token, require_bearer
from model_swap.errors import Forbidden

# Administrative routes: exact paths, and prefixes that open everything under them.
ADMIN_EXACT = frozenset({"/reset", "/admin/reset"})
ADMIN_PREFIXES = ("/models/", "/workers/")
JSON_ONLY = frozenset({"application/json"})


def is_admin_path(path: str) -> bool:
    """Pure: whether ``path`` is an administrative route."""
    return path in ADMIN_EXACT or path.startswith(ADMIN_PREFIXES)


def host_allowed(host: str, settings: StoreSettings) -> bool:
    """Pure: whether a ``Host`` header names this store (not a rebound DNS name)."""
    return browsers.host_allowed(host, ("localhost", settings.store_host, *settings.allowed_hosts))


def install_access(app: Flask, settings: StoreSettings, open_paths: tuple[str, ...]) -> None:
    """Install the checks of the module docstring on ``app``."""
    admin = tuple(k.encode() for k in settings.admin_keys)
    drain = tuple(k.encode() for k in settings.drain_keys)
    keyed = bool(settings.api_keys or settings.admin_keys or settings.drain_keys)
    require_bearer(
        app,
        (*settings.api_keys, *settings.admin_keys, *settings.drain_keys),
        realm="model-store",
        open_paths=open_paths,
    )

    @app.before_request
    def _check_access():
        path = request.path
        if path in OPEN_PATHS:
            return None
        if not keyed and not host_allowed(request.host, settings):
            raise Forbidden(f"Host {request.host!r} is not this store's (add it to ALLOWED_HOSTS)")
        presented = (presented_token() or "").encode() if keyed else b""
        drains_only = bool(drain) and _matches(presented, drain) and not _matches(presented, admin)
        if drains_only and not (request.method == "POST" and is_drain_path(path)):
            raise Forbidden("a drain key may only drain a worker")
        if keyed and is_admin_path(path) and not drains_only and not _matches(presented, admin):
            raise Forbidden(
                "this route needs an admin key (ADMIN_KEYS); client keys may not administer"
            )
        browsers.refuse_web_pages(request, JSON_ONLY)
        return None


def is_drain_path(path: str) -> bool:
    """Pure: ``/workers/<id>/drain``."""
    return path.startswith("/workers/") and path.endswith("/drain")


def _matches(presented: bytes, keys: tuple[bytes, ...]) -> bool:
    matched = False
    for key in keys:  # every key, in constant time: which one matched stays unknown
        matched |= hmac.compare_digest(presented, key)
    return matched
