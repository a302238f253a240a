"""Access control, the same way for both services.

A service configured with tokens refuses every request except ``GET /healthz``, ``GET /health``
and ``GET /ready``
unless it carries ``Authorization: Bearer <token>`` with one of them. Tokens
are compared in constant time. The worker (``require_worker_auth``) wants a
request signed with WORKER_TOKEN instead (``model_swap.worker_auth``) and
takes the bearer form only from loopback.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from flask import Flask, jsonify, request

from model_swap import worker_auth
from model_swap.errors import BadRequest, Unauthorized

OPEN_PATHS = frozenset({"/healthz", "/health", "/ready"})


def presented_token() -> str | None:
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
    is_open = _open_paths(open_paths)

    @app.before_request
    def _check_token():
        if is_open(request.path):
            return None
        presented = presented_token()
        if presented is None or not _matches(presented, accepted):
            raise Unauthorized(
                "missing or invalid bearer token",
                headers={"WWW-Authenticate": f'Bearer realm="{realm}"'},
            )
        return None


def _open_paths(open_paths: Iterable[str]):
    extra = tuple(open_paths)
    exact = OPEN_PATHS | {p for p in extra if not p.endswith("/")}
    prefixes = tuple(p for p in extra if p.endswith("/") and p != "/")
    if "/" in extra:
        exact = exact | {"/"}
    return lambda path: path in exact or bool(prefixes and path.startswith(prefixes))


def require_worker_auth(
    app: Flask, token: str, *, realm: str, open_paths: Iterable[str] = ()
) -> None:
    """The worker's access control (no-op without a token): a request signed with
    ``token`` (see ``model_swap.worker_auth``), or the bearer token from loopback only.
    Adds ``POST /identity``, where the worker proves it holds ``token``."""
    if not token:
        return
    verifier = worker_auth.Verifier(token)
    bearer = (token.encode(),)
    is_open = _open_paths(open_paths)

    def refuse(why: str):
        raise Unauthorized(why, headers={"WWW-Authenticate": f'Bearer realm="{realm}"'})

    @app.before_request
    def _check_signature():
        if is_open(request.path):
            return None
        signature = request.headers.get(worker_auth.SIGNATURE_HEADER)
        if signature is None:
            presented = presented_token()
            if presented is None or not _matches(presented, bearer):
                refuse("missing or invalid request signature")
            if not worker_auth.is_loopback(request.remote_addr):
                refuse("the bearer token is accepted from loopback only; sign the request")
            return None
        digest = worker_auth.body_digest(
            request.content_type or "",
            None if request.mimetype == "application/octet-stream" else request.get_data(),
            request.headers.get(worker_auth.DIGEST_HEADER),
        )
        path = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI", "")
        why = verifier.check(signature, request.method, path, digest)
        if why is not None:
            refuse(why)
        return None

    @app.post(worker_auth.IDENTITY_PATH)
    def identity():
        body = request.get_json(silent=True)
        nonce = body.get("nonce") if isinstance(body, dict) else None
        if not isinstance(nonce, str) or not 16 <= len(nonce) <= 128:
            raise BadRequest("identity: 'nonce' must be a string of 16 to 128 characters")
        return jsonify({"proof": worker_auth.proof(token, nonce)})


def bearer_header(token: str | None) -> dict[str, str]:
    """The header that presents ``token`` (empty when there is none)."""
    return {"Authorization": f"Bearer {token}"} if token else {}
