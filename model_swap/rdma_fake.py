"""A FAKE of RDMA verbs, in memory, for tests: not a transport, never used by the services.

No machine in CI has an RDMA device, yet the push protocol's logic (the ring,
credits, the final ack, errors mid-transfer) must run on every commit.
``FakeFabric`` joins ``FakeEndpoint``s (the ``RdmaEndpoint`` interface of
``model_swap.rdma_verbs.RcEndpoint``) by queue pair number inside one
process: a SEND is copied into the peer's oldest posted receive buffer, or
waits for one (like an RC queue pair retrying on RNR forever), and both sides
get completions. ``FakeFaults`` injects what real hardware does when things go
wrong: a SEND whose data arrives but whose completion reports an error (the
transport ACK was lost), a SEND that never arrives (retries exhausted), and an
exception of any type from any verb (a pyverbs with another API). After an
error completion the queue pair is in the error state: later sends complete
with flush errors, as on hardware.

The control channel, the listener, the model cache and the transport around
it are the real ones; only the verbs are fake.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from model_swap.rdma_protocol import Endpoint, TransferFailed

FAKE_GID = "fe80:0000:0000:0000:0000:0000:0000:0fa6"
IBV_MTU_4096 = 5


@dataclass
class FakeFaults:
    """What goes wrong on one side; SENDs are numbered from 0 per endpoint."""

    # The data arrives, but the sender's completion says IBV_WC_RETRY_EXC_ERR.
    lost_ack_sends: set[int] = field(default_factory=set)
    # The data never arrives; the sender's completion says IBV_WC_RETRY_EXC_ERR.
    dropped_sends: set[int] = field(default_factory=set)
    # Verb name ("__init__", "local", "connect", "post_send", "post_recv", "poll")
    # -> the exception it raises, as an unexpected pyverbs might.
    raises: dict[str, BaseException] = field(default_factory=dict)


class FakeFabric:
    """The wire between FakeEndpoints of one process. Thread-safe.

    ``endpoints(...)`` gives each side its ``EndpointFactory``; ``created``
    lists every endpoint made, so tests can check they were closed.
    """

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self._qpns = itertools.count(0x100)
        self._by_qpn: dict[int, FakeEndpoint] = {}
        self.created: list[FakeEndpoint] = []

    def endpoints(
        self, *, gid_type: str = "roce-v2", faults: FakeFaults | None = None
    ) -> FakeEndpoints:
        return FakeEndpoints(self, gid_type, faults or FakeFaults())

    def _register(self, endpoint: FakeEndpoint) -> int:
        with self.lock:
            qpn = next(self._qpns)
            self._by_qpn[qpn] = endpoint
            self.created.append(endpoint)
            return qpn

    def _peer(self, qpn: int) -> FakeEndpoint:
        with self.lock:
            peer = self._by_qpn.get(qpn)
        if peer is None:
            raise TransferFailed(f"fake fabric: no queue pair {qpn}")
        return peer


class FakeEndpoints:
    """The ``EndpointFactory`` of one side of a FakeFabric."""

    def __init__(self, fabric: FakeFabric, gid_type: str, faults: FakeFaults):
        self.fabric = fabric
        self.gid_type = gid_type
        self.faults = faults

    def __call__(self, slots: int, chunk_bytes: int) -> FakeEndpoint:
        return FakeEndpoint(self, slots, chunk_bytes)

    def check_start(self, needed: int, what: str) -> tuple[bool, str]:
        return True, "an in-memory FAKE fabric (tests only)"


class FakeEndpoint:
    """An ``RdmaEndpoint`` on a FakeFabric; see the module docstring. Not thread-safe
    (like the real one), although its peer runs on another thread."""

    def __init__(self, side: FakeEndpoints, slots: int, chunk_bytes: int):
        self._faults = side.faults
        self._raise("__init__")
        self._fabric = side.fabric
        self._gid_type = side.gid_type
        self.slots = slots
        self.chunk_bytes = chunk_bytes
        self._buffers = [memoryview(bytearray(chunk_bytes)) for _ in range(slots)]
        self._recvs: deque[int] = deque()  # posted receive slots, in order
        self._inbound: deque[bytes] = deque()  # peer's SENDs waiting for a receive
        self._completions: deque[tuple[int, int, str | None]] = deque()  # slot, bytes, error
        self._peer: FakeEndpoint | None = None
        self._sends = 0
        self._error = False  # the queue pair is in the error state
        self.closed = False
        self.qpn = self._fabric._register(self)

    def _raise(self, verb: str) -> None:
        err = self._faults.raises.get(verb)
        if err is not None:
            raise err

    def local(self) -> Endpoint:
        self._raise("local")
        return Endpoint(
            lid=0, gid=FAKE_GID, qpn=self.qpn, psn=0, mtu=IBV_MTU_4096, gid_type=self._gid_type
        )

    def connect(self, remote: Endpoint) -> None:
        self._raise("connect")
        self._peer = self._fabric._peer(remote.qpn)

    def view(self, slot: int) -> memoryview:
        return self._buffers[slot]

    def post_recv(self, slot: int) -> None:
        self._raise("post_recv")
        with self._fabric.lock:
            self._recvs.append(slot)
            self._deliver()

    def post_send(self, slot: int, length: int) -> None:
        self._raise("post_send")
        if self._peer is None:
            raise TransferFailed("fake: post_send before connect")
        number, self._sends = self._sends, self._sends + 1
        with self._fabric.lock:
            if self._error:
                self._completions.append((slot, 0, "IBV_WC_WR_FLUSH_ERR"))
            elif number in self._faults.dropped_sends or self._peer.closed:
                self._error = True
                self._completions.append((slot, 0, "IBV_WC_RETRY_EXC_ERR"))
            else:
                self._peer._inbound.append(bytes(self._buffers[slot][:length]))
                self._peer._deliver()
                lost = number in self._faults.lost_ack_sends
                if lost:
                    self._error = True
                self._completions.append((slot, length, "IBV_WC_RETRY_EXC_ERR" if lost else None))
            self._fabric.lock.notify_all()

    def _deliver(self) -> None:
        """Land waiting SENDs in posted receives (the fabric's lock is held)."""
        while self._inbound and self._recvs:
            data = self._inbound.popleft()
            slot = self._recvs.popleft()
            if len(data) > self.chunk_bytes:
                self._error = True
                self._completions.append((slot, 0, "IBV_WC_LOC_LEN_ERR"))
                continue
            self._buffers[slot][: len(data)] = data
            self._completions.append((slot, len(data), None))
        self._fabric.lock.notify_all()

    def poll(self, wait: float = 0.0) -> list[tuple[int, int]]:
        self._raise("poll")
        deadline = time.monotonic() + wait
        with self._fabric.lock:
            while not self._completions and (left := deadline - time.monotonic()) > 0:
                self._fabric.lock.wait(left)
            done = []
            while self._completions:
                slot, length, error = self._completions.popleft()
                if error is not None:
                    raise TransferFailed(f"work request on slot {slot} completed with {error}")
                done.append((slot, length))
            return done

    def close(self) -> None:
        with self._fabric.lock:
            self.closed = True
            self._fabric.lock.notify_all()

    def __enter__(self) -> FakeEndpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
