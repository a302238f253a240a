"""Keep-alive connections to one worker: opened, reused, given back, closed.

At most ``pool_size`` idle connections are kept (WORKER_POOL_SIZE). A pooled
connection the worker closed meanwhile (it restarted, or its keep-alive ran
out) is noticed before use when possible. An ``https`` worker's certificate
is verified against ``tls_name`` (a discovered worker is dialled by IP; its
certificate names the Service).
"""

from __future__ import annotations

import http.client
import logging
import select
import ssl
import threading
import time
from urllib.parse import urlsplit

from model_store_server.worker_client.errors import WorkerUnavailable

logger = logging.getLogger("model_store_server.worker_client")

# A pooled connection idle longer than this is closed rather than reused: well below the
# worker's keep-alive (5 s, model_swap/serving.py), so the worker never closes one as the
# store sends on it.
POOL_IDLE_SECONDS = 2.0


class ConnectionPool:
    """Connections to the worker at ``base_url``. Thread-safe: a checked-out connection
    belongs to its caller until ``checkin``."""

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float,
        read_timeout: float,
        pool_size: int = 0,
        tls_name: str | None = None,
    ):
        self.base_url = base_url
        self.timeout = (connect_timeout, read_timeout)
        self.pool_size = pool_size
        self._tls_name = tls_name
        self._idle: list[tuple[http.client.HTTPConnection, float]] = []  # and when given back
        self._lock = threading.Lock()
        self.connections_opened = 0  # fresh connections so far (tests, benchmarks)

    def checkout(self) -> tuple[http.client.HTTPConnection, bool]:
        """An idle pooled connection that still looks open, else a fresh one; (conn, reused)."""
        while True:
            with self._lock:
                conn, since = self._idle.pop() if self._idle else (None, 0.0)
            if conn is None:
                return self.connect(), False
            # Idle for long, the worker may be closing it right now (its keep-alive is 5 s):
            # a request sent into that close could not be retried unless idempotent.
            if time.monotonic() - since < POOL_IDLE_SECONDS and _still_open(conn):
                return conn, True
            conn.close()

    def checkin(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
        """Keep ``conn`` for the next call if its response was read to the end and neither
        side asked to close; else close it."""
        reusable = self.pool_size > 0 and response.isclosed() and not response.will_close
        if reusable:
            with self._lock:
                if len(self._idle) < self.pool_size:
                    self._idle.append((conn, time.monotonic()))
                    return
        response.close()
        conn.close()

    def close(self) -> None:
        """Close the idle pooled connections."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            conn.close()

    def connection(self, timeout: float) -> http.client.HTTPConnection:
        """A new, not yet connected connection with ``timeout``."""
        parts = urlsplit(self.base_url)
        if parts.scheme != "https":
            return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        return _NamedHTTPSConnection(
            parts.hostname, parts.port, timeout=timeout, server_name=self._tls_name
        )

    def connect(self) -> http.client.HTTPConnection:
        """A fresh connected connection (not pooled); WorkerUnavailable if none can be made."""
        conn = self.connection(self.timeout[0])
        try:
            conn.connect()
        except OSError as err:
            conn.close()
            logger.warning("worker at %s is unreachable: %r", self.base_url, err)
            raise WorkerUnavailable(f"worker at {self.base_url} is unreachable") from err
        conn.sock.settimeout(self.timeout[1])
        self.connections_opened += 1
        return conn


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
    """HTTPS to an address whose certificate is verified against ``server_name``."""

    def __init__(self, host, port, *, timeout: float, server_name: str | None):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._server_name = server_name or host

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self._server_name)
