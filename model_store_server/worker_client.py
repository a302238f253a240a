"""How the store talks to its inference worker over HTTP (control calls and inference).

Every call maps transport failures onto the store's errors: an unreachable
worker is ``WorkerUnavailable`` (503), a worker that answers with an error is
``WorkerError`` (502) carrying the worker's status and message.

Control calls and inference reuse keep-alive connections from a bounded pool
(WORKER_POOL_SIZE idle connections). A pooled connection the worker closed
meanwhile (it restarted, or its keep-alive ran out) is noticed before use
when possible; a call that still breaks on a reused connection is retried
once on a fresh one, only where that is safe: the call is idempotent (status,
unload, evict) or sending it failed, so the worker never read it. Pushes
always use a fresh connection.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import secrets
import select
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

from model_swap import worker_auth
from model_swap.errors import Unavailable, WorkerFailed
from model_swap.logs import current_request_id
from model_swap.names import InvalidModelName, validate_model_name

logger = logging.getLogger(__name__)


class WorkerUnavailable(Unavailable):
    """The worker could not be reached (connection refused or timed out)."""

    def __init__(self, message: str):
        super().__init__(message, retry_after=1, type="worker_unavailable")


class WorkerUnproven(Unavailable):
    """The worker could not prove it holds WORKER_TOKEN: nothing is sent to it."""

    def __init__(self, message: str):
        super().__init__(message, retry_after=1, type="worker_unproven")


class WorkerError(WorkerFailed):
    """The worker answered with an error status."""

    def __init__(self, message: str, *, worker_status: int | None = None, worker_message: str = ""):
        super().__init__(message)
        self.worker_status = worker_status
        self.worker_message = worker_message or message


def _broke_off(what: str, err: BaseException) -> WorkerError:
    """The client's fixed message for a call that failed in transit; the detail is logged."""
    logger.warning("worker call %s failed: %r", what, err)
    return WorkerError(f"the worker connection broke off during {what}")


def _kv_counters(entry: dict) -> dict:
    keys = ("kept_prompts", "kept_bytes", "reused_tokens", "restored_tokens", "prompt_tokens")
    return {key: int(entry.get(key) or 0) for key in keys}


@dataclass(frozen=True)
class WorkerReport:
    """What the worker says it holds (its ``GET /status``)."""

    cached: list[str]
    loaded: str | None
    n_ctx: int | None = None
    parallel: int = 1  # sequences per resident model, each with n_ctx tokens of KV cache
    kv_cache_bytes: int = 0  # host memory each resident model's prompt cache may hold
    # Kept prompts: per resident model its worker counters, and the states saved on disk.
    kv: dict = field(default_factory=dict)
    # The digest each cached file was verified against (None: the worker does not know).
    digests: dict[str, str | None] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)  # each cached file's bytes
    # Loaded models, least recently used first, with their estimated memory in bytes.
    resident: dict[str, int] = field(default_factory=dict)


class InferenceStream:
    """A streaming inference response from the worker; iterate for text, then ``close``."""

    def __init__(
        self,
        connection: http.client.HTTPConnection,
        response: http.client.HTTPResponse,
        checkin: Callable[[http.client.HTTPConnection, http.client.HTTPResponse], None],
    ):
        self._connection: http.client.HTTPConnection | None = connection
        self._response = response
        self._checkin = checkin
        self.model = response.getheader("X-Model")

    def __iter__(self) -> Iterator[bytes]:
        try:
            # read1 returns what has arrived (one token's chunk) instead of waiting for more.
            while chunk := self._response.read1(STREAM_READ_BYTES):
                yield chunk
        except (OSError, http.client.HTTPException) as err:
            raise _broke_off("POST /infer (streaming)", err) from err

    def close(self) -> None:
        """A stream read to its end gives its connection back to the pool; one left
        midway closes it (the worker sees the disconnect and stops generating).
        Idempotent: the connection is given back once."""
        connection, self._connection = self._connection, None
        if connection is not None:
            self._checkin(connection, self._response)


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
        self._tls_name = tls_name
        self._proven = not self._token
        self._prove_lock = threading.Lock()
        self.pool_size = pool_size
        self._idle: list[tuple[http.client.HTTPConnection, float]] = []  # and when given back
        self._pool_lock = threading.Lock()
        self.connections_opened = 0  # fresh connections so far (tests, benchmarks)

    # -- the pool ---------------------------------------------------------------------------

    def _checkout(self) -> tuple[http.client.HTTPConnection, bool]:
        """An idle pooled connection that still looks open, else a fresh one; (conn, reused)."""
        while True:
            with self._pool_lock:
                conn, since = self._idle.pop() if self._idle else (None, 0.0)
            if conn is None:
                return self._connect(), False
            # Idle for long, the worker may be closing it right now (its keep-alive is 5 s):
            # a request sent into that close could not be retried unless idempotent.
            if time.monotonic() - since < POOL_IDLE_SECONDS and _still_open(conn):
                return conn, True
            conn.close()

    def _checkin(
        self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse
    ) -> None:
        """Keep ``conn`` for the next call if its response was read to the end and neither
        side asked to close; else close it."""
        reusable = self.pool_size > 0 and response.isclosed() and not response.will_close
        if reusable:
            with self._pool_lock:
                if len(self._idle) < self.pool_size:
                    self._idle.append((conn, time.monotonic()))
                    return
        response.close()
        conn.close()

    def close(self) -> None:
        """Close the idle pooled connections."""
        with self._pool_lock:
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            conn.close()

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        parts = urlsplit(self.base_url)
        if parts.scheme != "https":
            return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        return _NamedHTTPSConnection(
            parts.hostname, parts.port, timeout=timeout, server_name=self._tls_name
        )

    def _connect(self) -> http.client.HTTPConnection:
        conn = self._connection(self.timeout[0])
        try:
            conn.connect()
        except OSError as err:
            conn.close()
            logger.warning("worker at %s is unreachable: %r", self.base_url, err)
            raise WorkerUnavailable(f"worker at {self.base_url} is unreachable") from err
        conn.sock.settimeout(self.timeout[1])
        self.connections_opened += 1
        return conn

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
                self._checkin(conn, response)
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
        conn, reused = self._checkout()
        sent = False
        try:
            conn.request(method, path, body=body, headers=self._headers(headers, *what_sent))
            sent = True
            response = conn.getresponse()
        except (OSError, http.client.HTTPException, UnicodeError) as err:
            conn.close()
            if not (reused and (idempotent or not sent)) or isinstance(err, UnicodeError):
                raise _broke_off(what, err) from err
            logger.info("a pooled connection to the worker was closed; retrying %s", what)
            conn = self._connect()
            try:
                conn.request(method, path, body=body, headers=self._headers(headers, *what_sent))
                response = conn.getresponse()
            except (OSError, http.client.HTTPException, UnicodeError) as again:
                conn.close()
                raise _broke_off(what, again) from again
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
            conn = self._connect()
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
                        raise _broke_off(what, err) from err
                else:
                    response = conn.getresponse()
                return json.loads(self._checked(conn, response, what).read() or b"{}")
            except SourceChanged:
                raise
            except (OSError, http.client.HTTPException, ValueError) as err:
                raise _broke_off(what, err) from err
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
            raise _broke_off(f"{method} {path}", err) from err
        except ValueError as err:
            logger.warning("worker answer to %s %s is not JSON: %r", method, path, err)
            raise WorkerError(f"the worker's answer to {method} {path} is not JSON") from err
        finally:
            self._checkin(conn, response)

    def status(self) -> WorkerReport:
        data = self._json("GET", "/status")
        try:
            entries = [e for e in data["cached"] if _valid_name(e["name"])]
            loaded = (
                data["loaded"] if data["loaded"] is None or _valid_name(data["loaded"]) else None
            )
            if "resident" in data:
                resident = {
                    entry["name"]: int(entry.get("estimated_bytes") or 0)
                    for entry in data["resident"]
                    if _valid_name(entry["name"])
                }
            else:  # a worker that holds one model
                resident = {loaded: 0} if loaded else {}
            return WorkerReport(
                cached=[entry["name"] for entry in entries],
                loaded=loaded,
                n_ctx=data.get("n_ctx"),
                # KV sequences per model (PARALLEL, plus prefix reuse's spare one).
                parallel=int(data.get("kv_streams") or data.get("parallel") or 1),
                kv_cache_bytes=int(data.get("kv_cache_bytes") or 0),
                kv={
                    "resident": {e["name"]: _kv_counters(e) for e in data.get("resident", [])},
                    "disk": data.get("kv_disk"),
                },
                digests={entry["name"]: entry.get("digest") for entry in entries},
                sizes={entry["name"]: int(entry.get("size") or 0) for entry in entries},
                resident=resident,
            )
        except (KeyError, TypeError, ValueError) as err:
            logger.warning("worker sent an unreadable status (%r): %.200r", err, data)
            raise WorkerError("the worker's answer to GET /status is not a status report") from None

    def health(self, timeout: float) -> None:
        """Probe ``GET /health`` on a fresh connection bounded by ``timeout`` seconds;
        raises WorkerUnavailable (unreachable, or silent for ``timeout``) or WorkerError."""
        self.prove()
        conn = self._connection(timeout)
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

    def infer(self, model: str, job: dict) -> InferenceStream:
        """Start a generation on ``model``; ``job`` is the rest of the /infer body."""
        body = json.dumps({"model": model, **job}).encode()
        conn, response = self._call("POST", "/infer", body, {"Content-Type": "application/json"})
        return InferenceStream(conn, response, self._checkin)


STREAM_READ_BYTES = 64 * 1024
# A pooled connection idle longer than this is closed rather than reused: well below the
# worker's keep-alive (5 s, model_swap/serving.py), so the worker never closes one as the
# store sends on it.
POOL_IDLE_SECONDS = 2.0
# A push is sent in steps of this size, so its progress can be reported between them.
SENDFILE_STEP_BYTES = 16 * 1024 * 1024


def _valid_name(name: object) -> bool:
    """Whether a name the worker reports is a model name; one that is not (it could forge
    a log line or markup) is left out of the report, and logged escaped."""
    try:
        validate_model_name(name)
    except InvalidModelName:
        logger.warning("the worker reported an invalid model name %r: ignored", name)
        return False
    return True


def _still_open(conn: http.client.HTTPConnection) -> bool:
    """An idle keep-alive connection has nothing to read; if it has (EOF), the worker
    closed it."""
    sock = conn.sock
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


class _NamedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to an address whose certificate is verified against ``server_name`` (a
    discovered worker is dialled by IP; its certificate names the Service)."""

    def __init__(self, host, port, *, timeout: float, server_name: str | None):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._server_name = server_name or host

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self._server_name)


class SourceChanged(OSError):
    """The file being pushed changed size while it was sent."""
