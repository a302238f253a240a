"""Running a service's WSGI app: in production (gunicorn) or in a background thread (tests).

Production (``serve_production``) is gunicorn with exactly one worker process
that serves requests from a thread pool (the ``gthread`` worker): the store's
and the worker's state live in that process's memory, so there is never a
second one. gunicorn streams each token as its own chunk, passes chunked and
sized request bodies to the app as a stream (read straight from the socket
into the upload's buffers by model_swap/wsgi_input.py, so nothing holds a
whole body) and binds port 0 to a free port, which is logged as
``<name> listening on http://host:port``. ``benchmarks/servers.py`` measured
it against the alternatives (README, "Running in production").

Stopping: SIGTERM, SIGINT and SIGHUP stop accepting at once, let running
requests (generations, pushes) finish for up to ``shutdown_grace`` seconds,
then cut the connections still open (their handlers fail on the closed
socket and clean up: an upload deletes its temporary file, a generation
frees the model) and exit 0. A second SIGINT, or SIGQUIT, stops at once.

A client that stops reading cannot hold a request forever: every blocking
read or write on a client connection fails after ``write_timeout`` seconds,
which closes the response (ending a generation) like a disconnect.

Tests and benchmarks may serve an app in-process with ``ServerThread``
(Werkzeug's threaded server, which has the same streaming behaviour).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import signal
import socket
import socketserver
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

from werkzeug.serving import make_server

from model_swap.wsgi_input import LazyDirectBody, with_readinto_input

logger = logging.getLogger(__name__)


class BackgroundServer:
    """Any ``socketserver`` server, served from a daemon thread; use as a context manager."""

    def __init__(self, server: socketserver.BaseServer, name: str):
        self._server = server
        self.port = server.server_address[1]
        # A short poll interval makes stop() quick (tests start and stop many servers).
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{name}-{self.port}",
            daemon=True,
        )

    def start(self):
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting requests and close the listening socket (blocks until done)."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=10)
        self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class ServerThread(BackgroundServer):
    """A WSGI app on ``host:port`` (port 0 picks a free one) in a background thread."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        super().__init__(make_server(host, port, app, threaded=True), "wsgi")
        self.host = host
        self.url = f"http://{host}:{self.port}"
        self._app = app

    def stop(self) -> None:
        """Stop serving, then the app's background threads (``extensions["stop"]``)."""
        super().stop()
        stop_background = getattr(self._app, "extensions", {}).get("stop")
        if stop_background is not None:
            stop_background()


@dataclass(frozen=True)
class ServeOptions:
    """How a service is served in production (from its settings)."""

    host: str
    port: int
    threads: int
    shutdown_grace: float  # seconds running requests may take to finish after a stop signal
    write_timeout: float  # seconds one read or write on a client connection may block


# After the grace period, the handlers of cut connections get this long to clean
# up before gunicorn's master kills the worker process.
CUT_MARGIN_SECONDS = 5.0
# Worker processes stop at once if the master dies (see _GracefulWorker.init_process).
PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies (no-op elsewhere).

    Meant for ``preexec_fn`` of a child process, or right after a fork.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


# Kernel send buffer of a client connection. What the services send is small (tokens,
# JSON), so this costs no speed; it bounds how much a client that stops reading can
# leave queued before writes block and STREAM_WRITE_TIMEOUT starts counting (Linux
# would otherwise let the buffer grow to megabytes: hundreds of thousands of tokens).
SEND_BUFFER_BYTES = 16 * 1024


def production_app(app, write_timeout: float):
    """Wrap ``app`` for gunicorn: client sockets time out and have a bounded send
    buffer; request bodies offer ``readinto``."""

    def wrapped(environ, start_response):
        client = environ.get("gunicorn.socket")
        if client is not None:
            client.settimeout(write_timeout)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
            environ["wsgi.input"] = LazyDirectBody(environ["wsgi.input"], client)
        return with_readinto_input(app)(environ, start_response)

    return wrapped


def serve_production(name: str, build_app: Callable[[], object], options: ServeOptions) -> None:
    """Serve the app ``build_app`` returns with gunicorn until a stop signal; exits the process.

    ``build_app`` runs in the worker process, after the fork, so that threads
    and native resources the app starts belong to the process that serves.
    Raises SystemExit: 0 after a clean stop, non-zero if the app failed to start.
    """
    from gunicorn.arbiter import Arbiter
    from gunicorn.workers.gthread import ThreadWorker

    grace = options.shutdown_grace

    class _GracefulWorker(ThreadWorker):
        """gthread, but SIGINT/SIGHUP drain like SIGTERM and the grace period is enforced."""

        def init_process(self):
            # If the master is SIGKILLed, the worker must not live on holding the port.
            die_with_parent(signal.SIGKILL)
            if os.getppid() != self.ppid:
                os._exit(1)
            self._active: set = set()
            self._active_lock = threading.Lock()
            super().init_process()

        def init_signals(self):
            super().init_signals()
            signal.signal(signal.SIGINT, self.handle_exit)
            signal.signal(signal.SIGHUP, self.handle_exit)

        def handle_exit(self, sig, frame):
            first = self.alive
            super().handle_exit(sig, frame)
            if first:
                self.method_queue.defer(self._stop_listening)
                timer = threading.Timer(grace, self._cut_connections)
                timer.daemon = True
                timer.start()

        def _stop_listening(self):
            # Refuse new connections now instead of leaving them in the backlog.
            self.set_accept_enabled(False)
            for listener in self.sockets:
                listener.close()
            logger.info("%s: stopped accepting; %d connection(s) open", name, self.nr_conns)

        def _cut_connections(self):
            with self._active_lock:
                active = list(self._active)
            if active:
                logger.warning(
                    "%s: shutdown grace of %gs is over; closing %d connection(s) still busy",
                    name,
                    grace,
                    len(active),
                )
            for conn in active:
                with contextlib.suppress(OSError):
                    conn.sock.shutdown(socket.SHUT_RDWR)

        def handle(self, conn):
            with self._active_lock:
                self._active.add(conn)
            try:
                return super().handle(conn)
            finally:
                with self._active_lock:
                    self._active.discard(conn)

    class _Arbiter(Arbiter):
        """gunicorn's master, with SIGINT and SIGHUP draining like SIGTERM.

        (gunicorn's own SIGINT is a quick stop, and SIGHUP restarts the worker,
        which would drop the service's in-memory state.)
        """

        def handle_int(self):
            raise StopIteration

        def handle_hup(self):
            raise StopIteration

    from gunicorn.app.base import BaseApplication

    def when_ready(arbiter) -> None:
        host, port = arbiter.LISTENERS[0].sock.getsockname()[:2]
        logger.info("%s listening on http://%s:%d", name, _url_host(host), port)

    class _Application(BaseApplication):
        def load_config(self):
            config = {
                "bind": f"{_url_host(options.host)}:{options.port}",
                "workers": 1,
                "worker_class": _GracefulWorker,
                "threads": options.threads,
                # Keep a few idle keep-alive connections beyond the busy threads.
                "worker_connections": options.threads * 4,
                "graceful_timeout": math.ceil(grace + CUT_MARGIN_SECONDS),
                # Heartbeat of the worker's main loop (not a request time limit).
                "timeout": 120,
                "keepalive": 5,
                "proc_name": name,
                "control_socket_disable": True,
                "when_ready": when_ready,
                "loglevel": logging.getLevelName(logging.getLogger().getEffectiveLevel()),
            }
            for key, value in config.items():
                self.cfg.set(key, value)

        def load(self):
            return production_app(build_app(), options.write_timeout)

    arbiter = _Arbiter(_Application())
    # Send gunicorn's own log lines through the service's logging set-up.
    for logger_name in ("gunicorn.error", "gunicorn.access"):
        gunicorn_logger = logging.getLogger(logger_name)
        for handler in list(gunicorn_logger.handlers):
            gunicorn_logger.removeHandler(handler)
        gunicorn_logger.propagate = True
    arbiter.run()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
