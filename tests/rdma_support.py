"""What the RDMA tests share: whether real RDMA works here, and a worker with its listener."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from model_swap.rdma_protocol import ControlChannel, RdmaUnavailable
from model_swap.rdma_verbs import find_port
from model_swap.serving import ServerThread


def rdma_problem() -> str | None:
    """Why real RDMA cannot run here (pyverbs missing, no device, no active port), or None."""
    try:
        find_port()
    except RdmaUnavailable as err:
        return str(err)
    return None


RDMA_PROBLEM = rdma_problem()


def needs_rdma(test):
    """Mark a real-RDMA test: it runs whenever pyverbs finds a device (an RDMA NIC or
    soft-RoCE) and is skipped, with the reason, elsewhere."""
    skip = pytest.mark.skipif(
        RDMA_PROBLEM is not None, reason=f"no usable RDMA here: {RDMA_PROBLEM}"
    )
    return pytest.mark.rdma(skip(test))


# The paths a machine without RDMA takes; where RDMA works, the rdma-marked tests cover it.
without_rdma = pytest.mark.skipif(
    RDMA_PROBLEM is None, reason="RDMA works here; the rdma-marked tests cover pushes"
)


def start_rdma_worker(start_worker, request, **overrides) -> ServerThread:
    """A real worker with its RDMA listener on a free port (``.rdma_port``), stopped after it."""
    worker = start_worker(worker_rdma=True, worker_rdma_port=0, **overrides)
    listener = worker.app.extensions["rdma_listener"]
    request.addfinalizer(listener.stop)
    worker.rdma_port = listener.port
    return worker


@contextmanager
def joined_channels(timeout: float = 10) -> Iterator[tuple[ControlChannel, ControlChannel]]:
    """Two ControlChannels (connecting side, accepting side) over one real loopback TCP
    connection; closed afterwards."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept()[0]))
    thread.start()
    client = ControlChannel.connect(
        "127.0.0.1", listener.getsockname()[1], connect_timeout=5, timeout=timeout
    )
    thread.join(5)
    server = ControlChannel(accepted[0], timeout=timeout)
    try:
        yield client, server
    finally:
        client.close()
        server.close()
        listener.close()
