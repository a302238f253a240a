"""How model bytes reach the worker: one interface, one class per transport.

``Transport.push`` sends a model file to the worker under a name, either to
cache it or to cache and load it, and blocks until the worker confirms size
and digest. ``HttpTransport`` (here) streams the file as one sized request
body that goes from the page cache to the socket by sendfile(2), so the store
never holds a model in memory; ``RdmaTransport`` (``rdma.py``)
sends it over RDMA verbs, and ``factory.py`` builds the configured
one, with HTTP as the fallback.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass
from pathlib import Path

from model_store_server.worker_client import WorkerClient
from model_swap.progress import current_progress


@dataclass(frozen=True)
class PushResult:
    model: str
    nbytes: int
    seconds: float
    transport: str
    # Of ``seconds``, what the worker spent loading the model (None: not loaded, or unknown).
    load_seconds: float | None = None
    # The worker's memory estimate of the loaded model (None: not loaded, or unknown).
    estimated_bytes: int | None = None

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / self.seconds / 1e6 if self.seconds > 0 else 0.0


class Transport(abc.ABC):
    """Sends model files to the worker. Implementations are thread-safe."""

    name: str

    @abc.abstractmethod
    def push(self, model: str, path: Path, *, digest: str, load: bool) -> PushResult:
        """Send ``path`` to the worker as ``model``; with ``load`` the worker also loads it.

        A transport reports the bytes sent so far to ``current_progress()``
        (``model_swap.progress``) when the caller tracks one; how often is its
        choice.

        ``digest`` is the file's ``algorithm:hex`` (``DigestCache.digest``);
        the worker keeps the file only if what it received has exactly this
        digest and size. Blocks until the worker
        has the whole file (and has loaded it, with ``load``). Raises
        WorkerUnavailable or WorkerError on failure, in which case the worker
        keeps no partial file.
        """


class HttpTransport(Transport):
    """HTTP POST of the file (sized body, sendfile(2)) to the worker's upload endpoints."""

    name = "http"

    def __init__(self, client: WorkerClient):
        self._client = client

    def push(self, model: str, path: Path, *, digest: str, load: bool) -> PushResult:
        size = path.stat().st_size
        progress = current_progress()
        endpoint = "/load_model_from_store" if load else "/cache_model"
        started = time.perf_counter()
        answer = self._client.upload_file(
            endpoint,
            path,
            {"X-Model-Name": model, "X-Model-Size": str(size), "X-Model-Digest": digest},
            on_sent=progress.set_done if progress else None,
        )
        seconds = time.perf_counter() - started
        return PushResult(
            model,
            size,
            seconds,
            self.name,
            answer.get("load_seconds"),
            answer.get("estimated_bytes"),
        )
