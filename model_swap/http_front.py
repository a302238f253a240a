"""The front server: one event-loop thread reads request heads, a thread pool runs the app.

A connection costs a file descriptor and a few kilobytes until it has sent a
whole request head (and its body, when that is small): only then does a
thread of the pool (``threads``) take it, parse it and run the WSGI app
(model_swap/http_request.py). Between requests the connection goes back to
the loop. The loop (``selectors``, level-triggered) enforces:

- ``header_timeout``: a request head (and a small body) must arrive within this
  many seconds of the connection opening or of its first byte; a connection
  that dawdles is closed, whatever it sends meanwhile (slowloris);
- ``keepalive_timeout``: an idle connection between requests is closed after this;
- ``max_connections``: a connection beyond the cap is answered 503 and closed;
- ``max_queued``: a request that finds this many requests already waiting for a
  thread of the pool is answered 503 with ``Retry-After`` and closed.

Request heads are parsed by llhttp (model_swap/http_parse.py): a head it
refuses is that connection's 4xx. ``GET /health`` (liveness) is answered by
the loop itself, never queued behind the pool. Any exception while the loop
serves one connection closes that connection and is logged; if the loop itself
ever fails, a supervisor logs it, counts it (``loop_restarts``) and runs it
again.

Large bodies (a model upload) are read by the app's thread straight from the
socket, and cut when they arrive slower than ``min_upload_rate`` (``Body``).
Every blocking read or write of a thread on a client connection fails after
``io_timeout`` seconds (STREAM_WRITE_TIMEOUT), and a response read slower than
``min_download_rate`` over a window of waiting is cut (model_swap/http_send.py).
Thread-safe where documented.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import queue
import selectors
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from model_swap.http_conn import Conn, FrontLimits
from model_swap.http_exchange import serve_exchange
from model_swap.http_parse import BadHead
from model_swap.http_probes import answer_probe
from model_swap.http_request import simple_response
from model_swap.http_send import SlowDownload

__all__ = ["FrontLimits", "FrontServer"]

logger = logging.getLogger(__name__)

# Bodies up to this size are read by the loop before a thread is given the request.
SMALL_BODY_BYTES = 64 * 1024
# Kernel send buffer of a client connection (see model_swap/serving.py).
SEND_BUFFER_BYTES = 16 * 1024
# How often the loop looks for connections past their deadline.
TICK_SECONDS = 0.1
# After accept(2) fails for want of file descriptors, wait this long before the next try.
ACCEPT_PAUSE_SECONDS = 0.1
# After the loop failed, wait this long before running it again.
LOOP_RESTART_PAUSE = 0.05
# What a client refused for a full request queue is told to wait (seconds).
RETRY_AFTER_SECONDS = 1


class FrontServer:
    """Serve ``app`` on ``listener`` (a bound, listening socket) until ``stop``."""

    def __init__(self, app, listener: socket.socket, limits: FrontLimits, name: str = "server"):
        self.app = app
        self.limits = limits
        self.name = name
        self._listener = listener
        listener.setblocking(False)
        self.address = listener.getsockname()[:2]
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._returned: queue.SimpleQueue[Conn] = queue.SimpleQueue()
        self._conns: set[Conn] = set()
        self._lock = threading.Lock()  # guards _conns (the loop adds, threads and loop remove)
        self._pool = ThreadPoolExecutor(limits.threads, thread_name_prefix=f"{name}-http")
        self._draining = threading.Event()
        self._stopped = threading.Event()
        self._accept_paused_until = 0.0
        self._drain_begun = False
        self._queued = 0  # requests handed to the pool that no thread has taken yet
        # Counters (read by model_swap/front_metrics.py); written by the loop or under _lock.
        self.loop_restarts = 0
        self.refused_queue_full = 0
        self.slow_readers_cut = 0
        self.probes_answered = 0
        self._app_readiness = getattr(app, "extensions", {}).get("readiness")
        self._thread = threading.Thread(target=self._run, name=f"{name}-loop", daemon=True)

    # ---- control (any thread) ----

    def start(self) -> FrontServer:
        self._selector.register(self._listener, selectors.EVENT_READ, "listener")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread.start()
        return self

    def open_connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def queued_requests(self) -> int:
        with self._lock:
            return self._queued

    def busy_connections(self) -> list[Conn]:
        with self._lock:
            return [conn for conn in self._conns if conn.busy]

    def drain(self) -> None:
        """Stop accepting, close idle connections, and close each busy one after its
        response. Returns at once; see ``busy_connections`` for what is left."""
        self._draining.set()
        self._wake()

    def cut(self) -> int:
        """Shut down the busy connections' sockets (their handlers fail and clean up);
        returns how many."""
        busy = self.busy_connections()
        for conn in busy:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        return len(busy)

    def stop(self, wait_threads: float = 5.0) -> None:
        """Stop the loop, close every connection, wait up to ``wait_threads`` seconds for
        the pool's running handlers."""
        self._draining.set()
        self._stopped.set()
        self._wake()
        self._thread.join(timeout=10)
        self.cut()
        self._pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + wait_threads
        while self.busy_connections() and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._lock:
            conns = list(self._conns)
            self._conns.clear()
        for conn in conns:
            conn.sock.close()
        for sock in (self._wake_r, self._wake_w):
            sock.close()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    # ---- the loop thread ----

    def _run(self) -> None:
        """The supervisor: runs the loop until ``stop``, again after any failure."""
        while not self._stopped.is_set():
            try:
                self._loop()
            except Exception:
                self.loop_restarts += 1
                logger.exception("%s: the event loop failed; running it again", self.name)
                time.sleep(LOOP_RESTART_PAUSE)
        self._selector.close()

    def _loop(self) -> None:
        next_expiry = 0.0
        while not self._stopped.is_set():
            if self._draining.is_set() and not self._drain_begun:
                self._drain_begun = True
                self._begin_drain()
            for key, _ in self._selector.select(TICK_SECONDS):
                if key.data == "listener":
                    self._accept()
                elif key.data == "wake":
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                else:
                    self._guarded(self._readable, key.data)
            while True:
                try:
                    conn = self._returned.get_nowait()
                except queue.Empty:
                    break
                self._guarded(self._take_back, conn)
            now = time.monotonic()
            if now >= next_expiry:
                next_expiry = now + TICK_SECONDS
                self._expire(now)
                paused = self._accept_paused_until
                if paused and now >= paused and not self._drain_begun:
                    self._accept_paused_until = 0.0
                    self._selector.register(self._listener, selectors.EVENT_READ, "listener")

    def _guarded(self, step, conn: Conn) -> None:
        """Run one step of the loop for ``conn``; any failure closes that connection only."""
        try:
            step(conn)
        except Exception:
            logger.exception("%s: closing connection %s after an error", self.name, conn.peer)
            self._close(conn)

    def _begin_drain(self) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(self._listener)
        self._listener.close()
        with self._lock:
            idle = [conn for conn in self._conns if not conn.busy]
        for conn in idle:
            self._close(conn)
        logger.info(
            "%s: stopped accepting; %d connection(s) busy", self.name, len(self.busy_connections())
        )

    def _accept(self) -> None:
        now = time.monotonic()
        if now < self._accept_paused_until:
            return
        for _ in range(64):
            try:
                sock, peer = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as err:
                if err.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    logger.warning("%s: cannot accept a connection: %s", self.name, err)
                    self._accept_paused_until = now + ACCEPT_PAUSE_SECONDS
                    with contextlib.suppress(KeyError, ValueError):
                        self._selector.unregister(self._listener)
                return
            with self._lock:
                full = len(self._conns) >= self.limits.max_connections
                conn = None if full else Conn(sock, peer, now + self.limits.header_timeout)
                if conn is not None:
                    self._conns.add(conn)
            if conn is None:
                self._refuse(sock)
                continue
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._selector.register(sock, selectors.EVENT_READ, conn)

    def _refuse(self, sock: socket.socket) -> None:
        """Answer 503 to a connection over the cap without reading it."""
        message = f"the server has {self.limits.max_connections} connections open; retry later"
        with contextlib.suppress(OSError):
            sock.setblocking(False)
            sock.send(simple_response(503, message))
        sock.close()

    def _readable(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(64 * 1024)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        if not conn.buffer and conn.head is None:
            conn.deadline = time.monotonic() + self.limits.header_timeout  # first byte of a request
        conn.buffer += data
        self._advance(conn)

    def _advance(self, conn: Conn) -> None:
        """Parse what ``conn`` has received; hand it to a thread once the request is ready
        (``GET /health`` is answered here, and the requests pipelined after it parsed)."""
        while conn.head is None:
            try:
                if not conn.read_head():
                    return  # the head is not complete yet
            except BadHead as err:
                self._reject(conn, err.status, str(err))
                return
            if self._answer_probe(conn) and conn.buffer:
                continue
        if conn.head is None:
            return
        head = conn.head
        length = head.content_length or 0
        small = not head.chunked and length <= SMALL_BODY_BYTES
        if small and len(conn.buffer) - conn.head_end < length:
            if head.expect_continue and not conn.continued:
                conn.continued = True
                with contextlib.suppress(OSError):
                    conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            return  # the loop waits for the small body
        self._dispatch(conn)

    def _answer_probe(self, conn: Conn) -> bool:
        """Answer ``GET /health`` (and ``/ready``) without a body from the loop; True if it
        did (the connection then holds whatever followed that request, or is closed)."""
        full = self.queued_requests() >= self.limits.max_queued
        answered = answer_probe(
            conn, self.limits, self._draining.is_set(), full, self._app_readiness, self.name
        )
        if answered is None:
            return False
        self.probes_answered += 1
        if not answered:
            self._close(conn)  # a client that does not read its probe's answer is let go
            conn.buffer.clear()
        return True

    def _reject(self, conn: Conn, status: int, message: str, extra: tuple = ()) -> None:
        with contextlib.suppress(OSError):
            conn.sock.send(simple_response(status, message, extra=extra))
        self._close(conn)

    def _dispatch(self, conn: Conn) -> None:
        with self._lock:
            full = self._queued >= self.limits.max_queued
            if not full:
                self._queued += 1
        if full:
            self.refused_queue_full += 1
            message = (
                f"{self._queued} requests are waiting for the server's "
                f"{self.limits.threads} threads; retry later"
            )
            self._reject(conn, 503, message, (f"Retry-After: {RETRY_AFTER_SECONDS}",))
            return
        self._selector.unregister(conn.sock)
        conn.busy = True
        self._pool.submit(self._handle, conn)

    def _take_back(self, conn: Conn) -> None:
        """A thread finished a request on ``conn`` and the connection may serve another."""
        if self._drain_begun:
            self._close(conn)
            return
        conn.busy = False
        now = time.monotonic()
        has_bytes = bool(conn.buffer)
        conn.deadline = now + (
            self.limits.header_timeout if has_bytes else self.limits.keepalive_timeout
        )
        try:
            conn.sock.setblocking(False)
            self._selector.register(conn.sock, selectors.EVENT_READ, conn)
        except (OSError, ValueError):
            self._close(conn)
            return
        if has_bytes:  # a pipelined request arrived with the last one
            self._advance(conn)

    def _expire(self, now: float) -> None:
        with self._lock:
            late = [c for c in self._conns if not c.busy and c.deadline <= now]
        for conn in late:
            if conn.buffer:
                logger.debug("%s: closing %s: request head too slow", self.name, conn.peer)
            self._close(conn)

    def _close(self, conn: Conn) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn.sock)
        with contextlib.suppress(OSError):
            conn.sock.close()
        with self._lock:
            self._conns.discard(conn)

    # ---- a pool thread ----

    def _handle(self, conn: Conn) -> None:
        with self._lock:
            self._queued -= 1
        keep = False
        try:
            keep = serve_exchange(
                conn, self.app, self.limits, self.address, not self._draining.is_set()
            )
        except SlowDownload as err:
            with self._lock:
                self.slow_readers_cut += 1
            logger.info("%s: cut connection %s: %s", self.name, conn.peer, err)
        except (OSError, ValueError) as err:  # the client went away, a timeout, a broken body
            logger.debug("%s: connection %s ended: %r", self.name, conn.peer, err)
        except Exception:
            logger.exception("%s: closing connection %s after an error", self.name, conn.peer)
        finally:
            if keep and not self._draining.is_set():
                self._returned.put(conn)
                self._wake()
            else:
                with contextlib.suppress(OSError):
                    conn.sock.close()
                with self._lock:
                    self._conns.discard(conn)
