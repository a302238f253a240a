"""Building the configured transport (TRANSPORT, ALLOW_FALLBACK) and falling back to HTTP.

``TRANSPORT=auto`` (the default) places files itself (a reflink, else a kernel
copy; never a hard link) when the worker's cache directory is on this
machine's filesystem and pushes over HTTP otherwise (``link.py``).
``TRANSPORT=http`` always pushes over HTTP.
``TRANSPORT=rdma`` pushes over RDMA verbs; with ``ALLOW_FALLBACK=1`` any RDMA
failure (pyverbs missing, no device, listener unreachable, error mid-transfer)
retries the same push over HTTP and logs why, so the ``PushResult`` then says
``http``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from model_store_server.config import StoreSettings
from model_store_server.transport.http import HttpTransport, PushResult, Transport
from model_store_server.transport.link import LinkTransport
from model_store_server.transport.rdma import RdmaPushFailed, RdmaTransport
from model_store_server.worker_client import WorkerClient
from model_swap.rdma_setup import check_start, endpoints_for

logger = logging.getLogger(__name__)


class FallbackTransport(Transport):
    """Tries ``primary``; on an RDMA failure pushes the same file with ``fallback``.

    Only ``RdmaPushFailed`` falls back: the worker kept nothing, so the retry
    starts clean. Other errors (for example the worker cannot load the file)
    would fail over HTTP too and are raised as they are. Thread-safe when both
    transports are.
    """

    def __init__(self, primary: Transport, fallback: Transport):
        self.primary = primary
        self.fallback = fallback
        self.name = primary.name

    def push(self, model: str, path: Path, *, digest: str, load: bool) -> PushResult:
        try:
            return self.primary.push(model, path, digest=digest, load=load)
        except RdmaPushFailed as err:
            logger.warning("falling back to %s for %s: %s", self.fallback.name, model, err.message)
        return self.fallback.push(model, path, digest=digest, load=load)


def build_transport(settings: StoreSettings, client: WorkerClient) -> Transport:
    """The transport ``settings`` ask for, pushing to the worker behind ``client``.

    With TRANSPORT=rdma and an RDMA device here, RLIMIT_MEMLOCK must allow the
    ring of one push: if not, SettingsError says how to raise it (a warning
    instead with ALLOW_FALLBACK=1, as every push would then go over HTTP).
    """
    http = HttpTransport(client)
    if settings.transport == "http":
        return http
    if settings.transport == "auto":
        return LinkTransport(client, http)
    rdma = RdmaTransport(
        client,
        settings.worker_rdma_host,
        settings.worker_rdma_port,
        connect_timeout=settings.worker_connect_timeout,
        read_timeout=settings.worker_read_timeout,
        token=settings.worker_token,
        endpoints=endpoints_for(settings),
    )
    check_start(
        rdma.endpoints,
        rdma.slots * rdma.chunk_bytes,
        "the store's RDMA transport (one push's ring)",
        "TRANSPORT=rdma",
        unusable="every push falls back to HTTP" if settings.allow_fallback else "every push fails",
        fallback="every push will fall back to HTTP" if settings.allow_fallback else "",
    )
    return FallbackTransport(rdma, http) if settings.allow_fallback else rdma
