"""Running a service's WSGI app: in production (the front server) or in a background thread (tests).

Production (``serve_production``) is one process: an event-loop thread reads
request heads and small bodies, and a pool of ``threads`` threads runs the app
(model_swap/http_front.py), so a slow or idle connection costs a file
descriptor and a few kilobytes, never a thread. The store's and the worker's
state live in that process's memory. Tokens are sent one chunk each, upload
bodies are read straight from the socket into the upload's buffers, and port 0
binds a free port, which is logged as ``<name> listening on http://host:port``.
``benchmarks/servers.py`` and ``benchmarks/slowloris.py`` measured it against
the alternatives (docs/production.md).

Stopping (``Stopper``): the first SIGTERM, SIGINT or SIGHUP stops accepting at
once, lets running requests (generations, pushes) finish for up to
``shutdown_grace`` seconds, then cuts the connections still open (their
handlers fail on the closed socket and clean up: an upload deletes its
temporary file, a generation frees the model) and exits 0. A repeat of those
signals within ``REPEAT_WINDOW`` seconds of the first is ignored (a tool that
signals a whole process group, or ``uv run`` forwarding, delivers one twice);
a later repeat, or SIGQUIT at any time, cuts the running requests at once
(they clean up the same way) and the process exits 0.

A client that stops reading cannot hold a request forever: every blocking
read or write on a client connection fails after ``write_timeout`` seconds,
which closes the response (ending a generation) like a disconnect.

Tests and benchmarks may serve an app in-process with ``ServerThread``
(Werkzeug's threaded server, which has the same streaming behaviour) or with
the front server itself (``FrontThread``).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import resource
import signal
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from werkzeug.serving import make_server

from model_swap.front_metrics import register_front_metrics
from model_swap.http_front import FrontLimits, FrontServer

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
    header_timeout: float = 10.0  # seconds a request head may take to arrive
    keepalive_timeout: float = 5.0  # seconds an idle connection is kept between requests
    max_connections: int = 4096  # open connections; one more is answered 503
    min_upload_rate: float = 1_000_000.0  # bytes/s a body must keep up over 30 s
    min_download_rate: float = 1000.0  # bytes/s a response must be read at (30 s of waiting)
    max_queued: int = 256  # requests waiting for a thread; one more is answered 503

    def limits(self) -> FrontLimits:
        return FrontLimits(
            threads=self.threads,
            header_timeout=self.header_timeout,
            keepalive_timeout=self.keepalive_timeout,
            max_connections=self.max_connections,
            min_upload_rate=self.min_upload_rate,
            io_timeout=self.write_timeout,
            max_queued=self.max_queued,
            min_download_rate=self.min_download_rate,
        )


# After the grace period, the handlers of cut connections get this long to clean up.
CUT_MARGIN_SECONDS = 5.0
# A stop signal repeated within this many seconds of the first is the same stop.
REPEAT_WINDOW = 2.0
# File descriptors kept beside the client connections (models, logs, the worker link...).
SPARE_FILES = 256
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
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


def raise_open_files_limit(max_connections: int, name: str) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards ``max_connections`` plus spares (up
    to the hard limit); returns how many connections the limit allows (logged if fewer)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_connections + SPARE_FILES
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            logger.info("%s: raised the open-files limit from %d to %d", name, soft, new)
            soft = new
    allowed = max_connections if soft == resource.RLIM_INFINITY else soft - SPARE_FILES
    if allowed < max_connections:
        logger.warning(
            "%s: the open-files limit (ulimit -n %d, hard %s) allows about %d connections, "
            "not MAX_CONNECTIONS=%d; raise the hard limit to serve more",
            name,
            soft,
            hard,
            max(allowed, 0),
            max_connections,
        )
    return max(min(allowed, max_connections), 1)


class Stopper:
    """The stop signals' state machine for one served process (see the module docstring).

    ``signal`` and ``hurry`` are called from signal handlers (the main thread);
    ``wait`` blocks the main thread until the server may be closed.
    """

    def __init__(self, server: FrontServer, grace: float, name: str, clock=time.monotonic):
        self._server = server
        self._grace = grace
        self._name = name
        self._clock = clock
        self._started: float | None = None
        self._hurried = False
        self._done = threading.Event()

    def signal(self, signum: int) -> None:
        now = self._clock()
        if self._started is None:
            self._started = now
            logger.info(
                "%s: signal %d: draining (running requests may take up to %gs)",
                self._name,
                signum,
                self._grace,
            )
            self._server.drain()
        elif now - self._started < REPEAT_WINDOW:
            logger.info("%s: signal %d repeated; already draining", self._name, signum)
        else:
            self.hurry(signum)
        self._done.set()  # wake wait()

    def hurry(self, signum: int) -> None:
        if self._started is None:
            self._started = self._clock()
            self._server.drain()
        if not self._hurried:
            self._hurried = True
            logger.warning("%s: signal %d: cutting running requests now", self._name, signum)
        self._done.set()

    def wait(self) -> None:
        """Block until a stop signal's drain is over (or cut), then until the cut
        connections' handlers finished (at most CUT_MARGIN_SECONDS)."""
        while self._started is None:
            self._done.wait(0.5)
            self._done.clear()
        cut_at: float | None = None
        while self._server.busy_connections():
            now = self._clock()
            if cut_at is None and (self._hurried or now >= self._started + self._grace):
                cut_at = now
                count = self._server.cut()
                if not self._hurried:
                    logger.warning(
                        "%s: shutdown grace of %gs is over; closing %d connection(s) still busy",
                        self._name,
                        self._grace,
                        count,
                    )
            if cut_at is not None and now >= cut_at + CUT_MARGIN_SECONDS:
                break
            self._done.wait(0.05)
            self._done.clear()


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv6 when the host is one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=4096)


def serve_production(name: str, build_app: Callable[[], object], options: ServeOptions) -> None:
    """Serve the app ``build_app`` returns with the front server until a stop signal.

    Runs in the main thread (it installs the signal handlers). Raises
    SystemExit(0) after a clean stop; what ``build_app`` raises propagates.
    """
    allowed = raise_open_files_limit(options.max_connections, name)
    listener = bind(options.host, options.port)
    app = build_app()
    limits = options.limits()
    if allowed < limits.max_connections:
        from dataclasses import replace

        limits = replace(limits, max_connections=allowed)
    server = FrontServer(app, listener, limits, name).start()
    register_front_metrics(app, server)
    stopper = Stopper(server, options.shutdown_grace, name)
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda signum, _frame: stopper.signal(signum))
    signal.signal(signal.SIGQUIT, lambda signum, _frame: stopper.hurry(signum))
    host, port = server.address
    logger.info("%s listening on http://%s:%d", name, _url_host(host), port)
    try:
        stopper.wait()
    finally:
        server.stop(wait_threads=0)
    stuck = len(server.busy_connections())
    logger.info("%s: stopped", name)
    if stuck:
        # A handler that ignored its closed connection would keep the interpreter from
        # exiting (it joins the pool's threads): leave without it.
        logger.warning("%s: %d handler(s) still running; exiting without them", name, stuck)
        logging.shutdown()
        os._exit(0)
    raise SystemExit(0)


class FrontThread:
    """A WSGI app served in-process by the front server (tests); a context manager."""

    def __init__(self, app, limits: FrontLimits | None = None, host: str = "127.0.0.1"):
        self._server = FrontServer(app, bind(host, 0), limits or FrontLimits(), "test")
        register_front_metrics(app, self._server)
        self.host = host
        self.port = self._server.address[1]
        self.url = f"http://{host}:{self.port}"

    @property
    def server(self) -> FrontServer:
        return self._server

    def start(self) -> FrontThread:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> FrontThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
