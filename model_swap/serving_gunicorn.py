"""The previous production server, gunicorn, kept for comparison (benchmarks/servers.py,
benchmarks/slowloris.py): ``serve_gunicorn`` serves a service's app the way
``serve_production`` did before the front server (model_swap/http_front.py)
replaced it: one gunicorn master and one ``gthread`` worker process whose
threads read request heads themselves (so a slow client holds a thread).
Request bodies are read by model_swap/wsgi_input.py; SIGTERM, SIGINT and
SIGHUP drain for ``shutdown_grace`` seconds, then connections are cut.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import threading
from collections.abc import Callable

from model_swap.http_front import SEND_BUFFER_BYTES
from model_swap.serving import CUT_MARGIN_SECONDS, ServeOptions, die_with_parent
from model_swap.wsgi_input import LazyDirectBody, with_readinto_input

logger = logging.getLogger(__name__)


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


def serve_gunicorn(name: str, build_app: Callable[[], object], options: ServeOptions) -> None:
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
