"""What a web page can make a browser send to a service, and the checks that refuse it.

Both services use these pure checks when they hold no secret (the store with no keys,
the worker with no WORKER_TOKEN): then a page the operator's browser opens could
otherwise drive them.

- DNS rebinding: the page's own DNS name, rebound to 127.0.0.1, arrives as ``Host``.
  A service answers only the names it was given (``localhost``, its bind address,
  ``ALLOWED_HOSTS``) and any IP address (an address is not a name anyone can rebind).
- A cross-site form or ``no-cors`` fetch can only send ``text/plain``, form or
  multipart bodies, or an untyped one (a Blob), and a browser names the page's
  ``Origin`` on every request that is not a GET or HEAD; anything else needs a
  CORS preflight, which neither service grants. So a state-changing request from
  another origin is refused (403), and so is a body of another type than the
  route takes (415). An untyped body without ``Origin`` is no browser's: Ollama
  clients send JSON that way (LiteLLM's ``ollama`` provider), as Ollama accepts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from model_swap.errors import Forbidden, UnsupportedMediaType

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def host_allowed(host: str, names: Iterable[str]) -> bool:
    """Pure: whether a ``Host`` header names this service (not a rebound DNS name)."""
    name = urlsplit(f"//{host}").hostname or ""
    if not name:
        return True  # no Host (HTTP/1.0): not a browser, which always names the site
    if name in names:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def is_foreign_origin(origin: str | None, host: str) -> bool:
    """Pure: whether a browser's ``Origin`` names another site than ``host``."""
    return origin is not None and urlsplit(origin).netloc != host


def has_body(request) -> bool:
    """Whether a (Flask) request announces a body: a length, or chunked transfer."""
    return bool(request.content_length) or (
        "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    )


def refuse_web_pages(request, body_types: frozenset[str], exempt: frozenset[str] = frozenset()):
    """Raise Forbidden or UnsupportedMediaType for a state-changing ``request`` (Flask)
    that a page of another site could have made a browser send (the module docstring).
    ``body_types``: the types a body may have; ``exempt``: paths that take any type."""
    if request.method in SAFE_METHODS:
        return
    origin = request.headers.get("Origin")
    where = f"{request.method} {request.path}"
    if is_foreign_origin(origin, request.host):
        raise Forbidden(f"cross-site {where} from {origin!r} refused")
    if not has_body(request) or request.path in exempt:
        return
    if request.mimetype in body_types or (not request.mimetype and origin is None):
        return
    raise UnsupportedMediaType(f"{where} needs Content-Type: application/json")
