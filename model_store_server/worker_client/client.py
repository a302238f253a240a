"""``WorkerClient``: the store's HTTP calls to one inference worker (control and inference).

Every call maps transport failures onto the store's errors
(``errors``): an unreachable worker is ``WorkerUnavailable`` (503), a
worker that answers with an error is ``WorkerError`` (502) carrying the
worker's status and message.

Control calls and inference reuse keep-alive connections from a bounded pool
(``pool``, WORKER_POOL_SIZE idle connections). A call that still
breaks on a reused connection is retried once on a fresh one, only where
that is safe: the call is idempotent (status, unload, evict) or sending it
failed, so the worker never read it. Pushes always use a fresh connection.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from model_store_server.worker_client.errors import (
    SourceChanged,
    WorkerError,
    WorkerUnavailable,
    WorkerUnproven,
    broke_off,
)
from model_store_server.worker_client.pool import ConnectionPool
from model_store_server.worker_client.report import WorkerReport, read_report
from model_store_server.worker_client.stream import InferenceStream
from model_swap import worker_auth
from model_swap.generation import TOGETHER_HEADER
from model_swap.logs import current_request_id

logger = logging.getLogger("model_store_server.worker_client")

# A push is sent in steps of this size, so its progress can be reported between them.
SENDFILE_STEP_BYTES = 16 * 1024 * 1024


class WorkerClient:
    """HTTP calls to one worker over pooled keep-alive connections (http.client: little
    per-call overhead). Thread-safe: a connection is used by one call at a time.

    With ``token`` every request is signed (``model_swap.worker_auth``) and no call
    but the identity challenge reaches the worker before it has proved it holds
    the token; a worker that cannot is ``WorkerUnproven``. ``tls_name``: the name
    an ``https`` worker's certificate is verified against (default: the URL's host).
    """

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float,
        read_timeout: float,
        token: str | None = None,
        pool_size: int = 0,
        tls_name: str | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.timeout = (connect_timeout, read_timeout)
        self._token = token or ""
        self._proven = not self._token
        self._prove_lock = threading.Lock()
        self._pool = ConnectionPool(
            self.base_url,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            pool_size=pool_size,
            tls_name=tls_name,
        )
        self.pool_size = pool_size

    @property
    def connections_opened(self) -> int:
        """Fresh connections so far (tests, benchmarks)."""
        return self._pool.connections_opened

    def close(self) -> None:
        """Close the idle pooled connections."""
        self._pool.close()

    def _headers(
        self, extra: dict[str, str], method: str, path: str, body: bytes | None
    ) -> dict[str, str]:
        """The request's id (so the worker's log lines join the store's), ``extra``, and
        the signature over them and ``body``."""
        request_id = current_request_id()
        headers = {**({"X-Request-Id": request_id} if request_id else {}), **extra}
        if self._token:
            digest = worker_auth.body_digest(
                headers.get("Content-Type", ""), body, headers.get(worker_auth.DIGEST_HEADER)
            )
            headers[worker_auth.SIGNATURE_HEADER] = worker_auth.sign(
                self._token, method, path, digest
            )
        return headers

    # -- proving the worker -------------------------------------------------------------------

    @property
    def proven(self) -> bool:
        return self._proven

    def forget_proof(self) -> None:
        """The worker went away: whatever answers at its address next proves itself again."""
        if self._token:
            self._proven = False

    def prove(self) -> None:
        """Make the worker answer a fresh nonce with an HMAC of it under WORKER_TOKEN
        (once; again after ``forget_proof``). Raises WorkerUnproven, WorkerUnavailable."""
        if self._proven:
            return
        with self._prove_lock:
            if self._proven:
                return
            nonce = secrets.token_hex(16)
            body = json.dumps({"nonce": nonce}).encode()
            path = worker_auth.IDENTITY_PATH
            try:
                conn, response = self._send(
                    "POST", path, body, {"Content-Type": "application/json"}, idempotent=True
                )
            except WorkerError as err:
                raise WorkerUnproven(
                    f"worker at {self.base_url} refused the identity challenge "
                    f"({err.worker_status})"
                ) from None
            try:
                answer = json.loads(response.read()).get("proof")
            except (OSError, http.client.HTTPException, ValueError, AttributeError):
                answer = None
            finally:
                self._pool.checkin(conn, response)
            if not worker_auth.proof_matches(self._token, nonce, answer):
                logger.warning("worker at %s failed the identity challenge", self.base_url)
                raise WorkerUnproven(f"worker at {self.base_url} does not hold WORKER_TOKEN")
            self._proven = True
            logger.info("worker at %s proved it holds WORKER_TOKEN", self.base_url)

    def _checked(
        self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse, what: str
    ) -> http.client.HTTPResponse:
        """``response`` if it is 2xx; otherwise close and raise WorkerError with its message."""
        if response.status < 400:
            return response
        body = response.read()
        conn.close()
        try:
            message = json.loads(body)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = body[:200].decode(errors="replace") or response.reason
        raise WorkerError(
            f"worker answered {response.status} to {what}: {message}",
            worker_status=response.status,
            worker_message=message,
        )

    def _call(
        self,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str],
        *,
        idempotent: bool = False,
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """One request on a pooled connection; the caller reads the response, then gives
        the connection back with ``_checkin``. A reused connection that breaks is retried
        once on a fresh one where safe (see the module docstring)."""
        self.prove()
        return self._send(method, path, body, headers, idempotent=idempotent)

    def _send(
        self,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str],
        *,
        idempotent: bool = False,
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        what = f"{method} {path}"
        what_sent = (method, path, body)
        conn, reused = self._pool.checkout()
        sent = False
        try:
            conn.request(method, path, body=body, headers=self._headers(headers, *what_sent))
            sent = True
            response = conn.getresponse()
        except (OSError, http.client.HTTPException, UnicodeError) as err:
            conn.close()
            if not (reused and (idempotent or not sent)) or isinstance(err, UnicodeError):
                raise broke_off(what, err) from err
            logger.info("a pooled connection to the worker was closed; retrying %s", what)
            conn = self._pool.connect()
            try:
                conn.request(method, path, body=body, headers=self._headers(headers, *what_sent))
                response = conn.getresponse()
            except (OSError, http.client.HTTPException, UnicodeError) as again:
                conn.close()
                raise broke_off(what, again) from again
        return conn, self._checked(conn, response, what)

    def upload_file(
        self,
        path: str,
        source: Path,
        headers: dict[str, str],
        on_sent: Callable[[int], None] | None = None,
    ) -> dict:
        """POST ``source`` as one sized body, sent with sendfile(2); returns the worker's JSON.

        ``on_sent`` is called with the bytes sent so far after each
        ``SENDFILE_STEP_BYTES`` (the body is sent in steps of that size).

        Zero-copy on the sending side: the file's pages go from the page cache
        to the socket without passing through Python, and the worker reads a
        plain ``Content-Length`` body (no chunk framing to undo). A problem
        with the local file raises OSError (before any byte is sent, or
        SourceChanged midway); worker problems map to
        WorkerUnavailable/WorkerError like ``request``.
        """
        self.prove()
        with open(source, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            conn = self._pool.connect()
            what = f"POST {path}"
            try:
                try:
                    conn.putrequest("POST", path, skip_accept_encoding=True)
                    for key, value in self._headers(
                        {
                            **headers,
                            "Content-Type": "application/octet-stream",
                            "Content-Length": str(size),
                        },
                        "POST",
                        path,
                        None,
                    ).items():
                        conn.putheader(key, value)
                    conn.endheaders()
                    sent = 0
                    while sent < size:
                        step = conn.sock.sendfile(file, sent, min(SENDFILE_STEP_BYTES, size - sent))
                        if not step:
                            break
                        sent += step
                        if on_sent is not None:
                            on_sent(sent)
                    if sent != size:
                        raise SourceChanged(
                            f"{file.name} shrank while being sent ({sent} of {size})"
                        )
                except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError) as err:
                    # The worker may have answered early (401, 507...) and closed: report that.
                    try:
                        response = conn.getresponse()
                    except (OSError, http.client.HTTPException):
                        raise broke_off(what, err) from err
                else:
                    response = conn.getresponse()
                return json.loads(self._checked(conn, response, what).read() or b"{}")
            except SourceChanged:
                raise
            except (OSError, http.client.HTTPException, ValueError) as err:
                raise broke_off(what, err) from err
            finally:
                conn.close()

    def _json(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
    ) -> dict:
        """One call whose answer is JSON; raises WorkerUnavailable/WorkerError."""
        idempotent = method in ("GET", "DELETE") or path.endswith("/unload")
        conn, response = self._call(method, path, body, headers or {}, idempotent=idempotent)
        try:
            return json.loads(response.read())
        except (OSError, http.client.HTTPException) as err:
            raise broke_off(f"{method} {path}", err) from err
        except ValueError as err:
            logger.warning("worker answer to %s %s is not JSON: %r", method, path, err)
            raise WorkerError(f"the worker's answer to {method} {path} is not JSON") from err
        finally:
            self._pool.checkin(conn, response)

    def status(self) -> WorkerReport:
        return read_report(self._json("GET", "/status"))

    def health(self, timeout: float) -> None:
        """Probe ``GET /health`` on a fresh connection bounded by ``timeout`` seconds;
        raises WorkerUnavailable (unreachable, or silent for ``timeout``) or WorkerError."""
        self.prove()
        conn = self._pool.connection(timeout)
        try:
            conn.request("GET", "/health", headers=self._headers({}, "GET", "/health", None))
            response = conn.getresponse()
            response.read()
        except (OSError, http.client.HTTPException) as err:
            self.forget_proof()
            raise WorkerUnavailable(f"worker at {self.base_url} is unreachable ({err!r})") from err
        finally:
            conn.close()
        if response.status != 200:
            raise WorkerError(
                f"worker answered {response.status} to GET /health", worker_status=response.status
            )

    def evict(self, model: str) -> None:
        """Unload ``model`` and delete its file on the worker (already gone: done)."""
        self._idempotent("DELETE", f"/models/{quote(model)}")

    def unload(self, model: str) -> None:
        """Drop ``model`` from the worker's memory, keeping its file (not resident: done)."""
        self._idempotent("POST", f"/models/{quote(model)}/unload")

    def _idempotent(self, method: str, path: str) -> None:
        """A call whose 404 means the worker is already as we want it."""
        try:
            self._json(method, path)
        except WorkerError as err:
            if err.worker_status != 404:
                raise

    def cache_location(self) -> tuple[str, int] | None:
        """The worker's cache directory and its filesystem id (None: it does not say)."""
        data = self._json("GET", "/status")
        directory, device = data.get("model_cache_dir"), data.get("model_cache_dev")
        if not isinstance(directory, str) or not isinstance(device, int):
            return None
        return directory, device

    def read_probe(self, placed: str) -> str:
        """The content of a probe file the store wrote into the worker's cache directory."""
        data = self._json("POST", "/cache_probe", None, {"X-Placed-Name": placed})
        return str(data.get("content", ""))

    def adopt(self, model: str, placed: str, size: int, digest: str, *, load: bool) -> dict:
        """Ask the worker to verify and keep the file placed in its cache as ``placed``."""
        path = "/adopt_model?load=1" if load else "/adopt_model"
        headers = {
            "X-Model-Name": model,
            "X-Placed-Name": placed,
            "X-Model-Size": str(size),
            "X-Model-Digest": digest,
        }
        return self._json("POST", path, None, headers)

    def load_local(self, model: str) -> dict:
        return self._json("POST", "/load_model_from_local_store", None, {"X-Model-Name": model})

    def infer(self, model: str, job: dict, together: int = 1) -> InferenceStream:
        """Start a generation on ``model``; ``job`` is the rest of the /infer body;
        ``together``: generations the store sends to ``model`` at once with this one."""
        body = json.dumps({"model": model, **job}).encode()
        headers = {"Content-Type": "application/json"}
        if together > 1:
            headers[TOGETHER_HEADER] = str(together)
        conn, response = self._call("POST", "/infer", body, headers)
        return InferenceStream(conn, response, self._pool.checkin)
