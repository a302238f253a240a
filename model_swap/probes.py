"""Starting local services in tests and benchmarks: a free loopback port, waiting for /healthz.

The one copy of each, shared by ``tests/`` and ``benchmarks/``.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable

import requests


def free_port() -> int:
    """A loopback TCP port nothing listens on right now (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_healthy(
    url: str,
    *,
    process: subprocess.Popen | None = None,
    timeout: float = 60,
    describe: str = "the service",
    path: str = "/healthz",
    check: Callable[[], None] | None = None,
) -> None:
    """Block until ``GET {url}{path}`` answers 2xx; RuntimeError if ``process`` exits first
    or ``timeout`` seconds pass. ``check`` runs before each try and may raise to give up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check is not None:
            check()
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{describe} exited with code {process.returncode} while starting")
        try:
            if requests.get(f"{url}{path}", timeout=1).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{describe} did not answer on {url}{path} within {timeout:g}s")
