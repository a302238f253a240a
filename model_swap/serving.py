"""Running a service's WSGI app: in a background thread (tests, benchmarks) or in the foreground.

Both use Werkzeug's threaded server, which speaks HTTP/1.1, streams chunked
responses as they are produced and accepts chunked request bodies. Port 0
picks a free port; the bound port is available as ``ServerThread.port``.
"""

from __future__ import annotations

import logging
import signal
import socketserver
import threading

from werkzeug.serving import make_server

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


def serve_foreground(app, host: str, port: int, name: str) -> None:
    """Serve until SIGINT or SIGTERM, then stop cleanly."""
    server = make_server(host, port, app, threaded=True)
    stopping = threading.Event()

    def _stop(signum, _frame):
        if not stopping.is_set():
            stopping.set()
            logger.info("%s: received signal %d, shutting down", name, signum)
            threading.Thread(target=server.shutdown, daemon=True).start()

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    logger.info("%s listening on http://%s:%d", name, host, server.server_port)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        logger.info("%s stopped", name)
