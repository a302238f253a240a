"""How the store and its workers prove WORKER_TOKEN to each other without sending it.

The store signs every request to a worker: ``X-Model-Swap-Signature:
t=<unix time>,n=<random nonce>,s=<hex>`` where ``s`` is an HMAC-SHA256 of
WORKER_TOKEN over the method, the path (with its query), ``t``, ``n`` and a
digest of the body. The body digest is the SHA-256 of the body, except for an
``application/octet-stream`` body (a model push): there it is the
``X-Model-Digest`` the push already declares, which the worker verifies
against the bytes it stores, so a push is signed without hashing it twice.
The worker refuses a signature older or newer than ``WINDOW`` seconds and a
nonce it has already seen within the window (a replay).

Before the store trusts a worker it sends a nonce of its own choosing to
``POST /identity`` (a signed request like any other) and checks the answer:
an HMAC of the nonce under WORKER_TOKEN. A worker that cannot answer (an
impostor without the token) is sent nothing else: no prompts, no model
bytes, no placement (``WorkerClient`` refuses every call until the proof
holds).

The plain ``Authorization: Bearer`` form stays for callers on the worker's
own machine (the preStop hook, an operator's curl): the worker accepts it
only from a loopback address.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import threading
import time
from collections.abc import Callable

SIGNATURE_HEADER = "X-Model-Swap-Signature"
DIGEST_HEADER = "X-Model-Digest"
IDENTITY_PATH = "/identity"
WINDOW = 30.0  # seconds a signature is accepted either side of the worker's clock
_PROOF_LABEL = b"model-swap-identity\n"
MAX_NONCES = 100_000  # nonces remembered against replays (about 1,600 requests/s for 60 s)


def body_digest(content_type: str, body: bytes | None, declared: str | None) -> str:
    """What a signature covers of the body (see the module docstring)."""
    if content_type.split(";")[0].strip().lower() == "application/octet-stream":
        return "declared:" + (declared or "")
    return "sha256:" + hashlib.sha256(body or b"").hexdigest()


def _mac(token: str, *parts: str) -> str:
    message = "\n".join(parts).encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()


def sign(
    token: str,
    method: str,
    path: str,
    digest: str,
    *,
    clock: Callable[[], float] = time.time,
) -> str:
    """The signature header's value for one request."""
    stamp = f"{clock():.3f}"
    nonce = secrets.token_hex(12)
    return f"t={stamp},n={nonce},s={_mac(token, method.upper(), path, stamp, nonce, digest)}"


def proof(token: str, nonce: str) -> str:
    """A worker's answer to the store's identity challenge."""
    return hmac.new(token.encode(), _PROOF_LABEL + nonce.encode(), hashlib.sha256).hexdigest()


def proof_matches(token: str, nonce: str, answer: object) -> bool:
    return isinstance(answer, str) and hmac.compare_digest(proof(token, nonce), answer)


def is_loopback(address: str | None) -> bool:
    try:
        return ipaddress.ip_address((address or "").split("%")[0]).is_loopback
    except ValueError:
        return False


class Verifier:
    """Checks signatures on the worker's side. Thread-safe.

    ``check`` returns None when the signature holds, else why it does not.
    """

    def __init__(self, token: str, *, clock: Callable[[], float] = time.time):
        self._token = token
        self._clock = clock
        self._seen: dict[str, float] = {}  # nonce -> when it stops mattering
        self._lock = threading.Lock()

    def check(self, value: str, method: str, path: str, digest: str) -> str | None:
        try:
            fields = dict(part.split("=", 1) for part in value.split(","))
            stamp, nonce, mac = fields["t"], fields["n"], fields["s"]
            when = float(stamp)
        except (KeyError, ValueError):
            return "malformed signature"
        now = self._clock()
        if not abs(now - when) <= WINDOW:
            return "signature outside the accepted time window"
        expected = _mac(self._token, method.upper(), path, stamp, nonce, digest)
        if not hmac.compare_digest(expected, mac):
            return "invalid signature"
        with self._lock:
            # Forget nonces whose signatures have expired, oldest first (insertion order), and
            # beyond MAX_NONCES the oldest anyway (the time window still refuses those).
            while self._seen:
                oldest = next(iter(self._seen))
                if self._seen[oldest] >= now and len(self._seen) < MAX_NONCES:
                    break
                del self._seen[oldest]
            if nonce in self._seen:
                return "replayed signature"
            self._seen[nonce] = now + 2 * WINDOW
        return None
