"""The RDMA push protocol's two channels: the TCP control connection and the queue pair's interface.

``ControlChannel`` carries the framed messages (``rdma_messages``) over one
TCP connection per push. ``RdmaEndpoint`` is the interface of one side's
queue pair (``model_swap.rdma_verbs.RcEndpoint`` over real verbs,
``model_swap.rdma_fake`` in memory for the tests), ``EndpointFactory`` what
builds one per push.
"""

from __future__ import annotations

import contextlib
import select
import socket
from typing import Protocol

from model_swap.errors import cause
from model_swap.rdma_messages import (
    FRAME_HEADER,
    MAX_FRAME_BYTES,
    Endpoint,
    Message,
    ProtocolError,
    RdmaError,
    RdmaUnavailable,
    TransferFailed,
    decode,
    encode,
)

# -- one side's queue pair -----------------------------------------------------------


class RdmaEndpoint(Protocol):
    """One side of a push: a reliable-connected queue pair with a ring of ``slots``
    registered buffers of ``chunk_bytes`` each. Not thread-safe: one session drives it.

    Every method raises only RdmaError subclasses: RdmaUnavailable when RDMA
    cannot be used at all, TransferFailed for anything that goes wrong later.
    """

    slots: int
    chunk_bytes: int

    def local(self) -> Endpoint:
        """This queue pair's address, for the peer."""

    def connect(self, remote: Endpoint) -> None:
        """Connect to the peer's queue pair (ready to send and receive)."""

    def view(self, slot: int) -> memoryview:
        """The registered buffer of ``slot`` (``chunk_bytes`` long), to fill or read."""

    def post_recv(self, slot: int) -> None:
        """Offer ``slot``'s buffer for the peer's next SEND."""

    def post_send(self, slot: int, length: int) -> None:
        """SEND the first ``length`` bytes of ``slot``'s buffer to the peer's next receive."""

    def poll(self, wait: float = 0.0) -> list[tuple[int, int]]:
        """Completed work requests as (slot, byte_len), polling up to ``wait`` seconds;
        TransferFailed for a completion with an error status."""

    def close(self) -> None:
        """Release everything; safe to call twice."""

    def __enter__(self) -> RdmaEndpoint: ...

    def __exit__(self, *exc) -> None: ...


class EndpointFactory(Protocol):
    """Builds the endpoint of one push: ``RcEndpoint`` (real verbs) or a fake's."""

    def __call__(self, slots: int, chunk_bytes: int) -> RdmaEndpoint:
        """A new endpoint; RdmaUnavailable (or TransferFailed) when none can be set up."""

    def check_start(self, needed: int, what: str) -> tuple[bool, str]:
        """At a service's start: (usable, what is used or why not); RdmaUnavailable if
        ``needed`` bytes of buffers could not be registered (RLIMIT_MEMLOCK)."""


# -- the connection ------------------------------------------------------------------


class ControlChannel:
    """One control connection (either side). Not thread-safe: one session uses it."""

    def __init__(self, sock: socket.socket, *, timeout: float):
        self.sock = sock
        self.timeout = timeout
        sock.settimeout(timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @classmethod
    def connect(cls, host: str, port: int, *, connect_timeout: float, timeout: float):
        """Connect to an RDMA listener; RdmaUnavailable if it cannot be reached."""
        try:
            sock = socket.create_connection((host, port), timeout=connect_timeout)
        except OSError as err:
            raise RdmaUnavailable(
                f"RDMA listener at {host}:{port} is unreachable: {cause(err)}"
            ) from err
        return cls(sock, timeout=timeout)

    def send(self, message: Message) -> None:
        try:
            self.sock.sendall(encode(message))
        except OSError as err:
            raise TransferFailed(f"control connection broke while sending: {cause(err)}") from err

    def send_quietly(self, message: Message) -> None:
        """Best effort: the peer may be gone already."""
        with contextlib.suppress(RdmaError):
            self.send(message)

    def receive(self, timeout: float | None = None) -> Message:
        """The next message; TransferFailed if the peer closes or stays silent past ``timeout``."""
        self.sock.settimeout(self.timeout if timeout is None else timeout)
        (length,) = FRAME_HEADER.unpack(self._exactly(FRAME_HEADER.size))
        if length > MAX_FRAME_BYTES:
            raise ProtocolError(f"a {length}-byte message is larger than {MAX_FRAME_BYTES} bytes")
        return decode(self._exactly(length))

    def pending(self, wait: float = 0.0) -> bool:
        """Whether a message (or the peer's close) is waiting to be read."""
        readable, _, _ = select.select([self.sock], [], [], wait)
        return bool(readable)

    def _exactly(self, count: int) -> bytes:
        chunks = []
        while count:
            try:
                chunk = self.sock.recv(count)
            except TimeoutError:
                raise TransferFailed(
                    f"the peer sent nothing for {self.sock.gettimeout():g}s"
                ) from None
            except OSError as err:
                raise TransferFailed(f"control connection broke: {cause(err)}") from err
            if not chunk:
                raise TransferFailed("the peer closed the control connection")
            chunks.append(chunk)
            count -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> ControlChannel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
