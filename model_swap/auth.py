"""Bearer-token access control, the same way for both services.

A service configured with tokens refuses every request except ``GET /healthz``, ``GET /health``
and ``GET /ready``
unless it carries ``Authorization: Bearer <token>`` with one of them. Tokens
are compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from flask import Flask, request

from model_swap.errors import Unauthorized

OPEN_PATHS = frozenset({"/healthz", "/health", "/ready"})


def _presented_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _matches(presented: str, tokens: tuple[bytes, ...]) -> bool:
    candidate = presented.encode()
    # Compare against every token, so timing reveals neither which one matched nor how much.
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(candidate, token)
    return matched


def require_bearer(
    app: Flask, tokens: Iterable[str], *, realm: str, open_paths: Iterable[str] = ()
) -> None:
    """Refuse requests without a valid bearer token (no-op when ``tokens`` is empty).

    ``open_paths`` are served without a token as well as the health probes (a path
    ending in ``/`` opens everything under it).
    """
    accepted = tuple(t.encode() for t in tokens if t)
    if not accepted:
        return
    extra = tuple(open_paths)
    exact = OPEN_PATHS | {p for p in extra if not p.endswith("/")}
    prefixes = tuple(p for p in extra if p.endswith("/") and p != "/")
    if "/" in extra:
        exact = exact | {"/"}

    @app.before_request
    def _check_token():
        if request.path in exact or (prefixes and request.path.startswith(prefixes)):
            return None
        presented = _presented_token()
        if presented is None or not _matches(presented, accepted):
            raise Unauthorized(
                "missing or invalid bearer token",
                headers={"WWW-Authenticate": f'Bearer realm="{realm}"'},
            )
        return None


def bearer_header(token: str | None) -> dict[str, str]:
    """The header that presents ``token`` (empty when there is none)."""
    return {"Authorization": f"Bearer {token}"} if token else {}
