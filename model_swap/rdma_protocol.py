"""The RDMA push protocol's out-of-band control channel: messages, framing, decisions.

An RDMA push moves the model's bytes over an RC queue pair, but the two sides
first meet over a plain TCP connection to the worker's RDMA listener
(WORKER_RDMA_HOST:WORKER_RDMA_PORT), which carries everything that is not bulk
data. One push, one connection:

1. store -> worker ``offer``: model name, size, digest (``blake3:<hex>``, see
   ``model_swap.digest``), chunk size, and the store's queue pair address
   (``Endpoint``: LID, GID, GID type, QPN, PSN, MTU);
2. worker -> store ``accept`` with the worker's ``Endpoint`` and its number of
   receive credits (posted receive buffers of one chunk each), or ``refuse``
   with the reason (bad offer, a GID type that differs from the worker's, no
   RDMA on the worker, too many offers at once);
3. the store SENDs the file in chunks over the queue pair, at most one chunk
   per credit; the worker answers each chunk it has written to disk with a
   ``credit`` once it has reposted that buffer. The store may ``abort``;
4. worker -> store ``ack`` with the size and digest of the file it renamed
   into its cache, or ``nack`` with the reason it kept nothing. An ack that
   matches what was sent is final: the file is in place, whatever the queue
   pair reports afterwards.

Each message is a JSON object preceded by its length as 4 big-endian bytes.
This module holds no verbs code and imports no pyverbs, so both services and
the tests use it on any machine. ``RdmaEndpoint`` is the interface of one side's
queue pair: ``model_swap.rdma_verbs.RcEndpoint`` implements it over real verbs,
``model_swap.rdma_fake.FakeFabric`` in memory for the tests.
"""

from __future__ import annotations

import contextlib
import json
import re
import select
import socket
import struct
from dataclasses import asdict, dataclass, field
from typing import Protocol

from model_swap.digest import InvalidDigest, parse_digest
from model_swap.errors import cause
from model_swap.names import InvalidModelName, validate_model_name

PROTOCOL = 2
MAX_FRAME_BYTES = 64 * 1024
MIN_CHUNK_BYTES = 4 * 1024
MAX_CHUNK_BYTES = 16 * 1024 * 1024
MAX_CREDITS = 64
# The store's default chunk (bytes per SEND, one ring buffer) and both sides' ring length.
DEFAULT_CHUNK_BYTES = 1024 * 1024
RING_SLOTS = 4

_HEADER = struct.Struct(">I")
_GID = re.compile(r"^[0-9a-f]{4}(:[0-9a-f]{4}){7}$")
# How a GID is used on the wire: InfiniBand, RoCE v1 (Ethernet, not routable), RoCE v2 (UDP/IP).
GID_TYPES = ("ib", "roce-v1", "roce-v2")


class RdmaError(Exception):
    """An RDMA push failed; the message names the cause."""


class RdmaUnavailable(RdmaError):
    """RDMA cannot be used for this push (no pyverbs, no device, listener unreachable,
    offer refused); raised before any model byte moved."""


class TransferFailed(RdmaError):
    """A push failed after the handshake (completion error, abort, nack, timeout)."""


class ProtocolError(TransferFailed):
    """The peer sent something this protocol does not allow."""


# -- messages ------------------------------------------------------------------------


def _int(data: dict, key: str, lo: int, hi: int) -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ProtocolError(f"{key} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def _text(data: dict, key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise ProtocolError(f"{key} must be a string, got {value!r}")
    return value


def _optional_text(data: dict, key: str) -> str:
    value = data.get(key, "")
    if not isinstance(value, str) or len(value) > 1024:
        raise ProtocolError(f"{key} must be a string")
    return value


def _digest(data: dict, key: str = "digest") -> str:
    try:
        return parse_digest(data.get(key))
    except InvalidDigest as err:
        raise ProtocolError(f"{key}: {err}") from None


@dataclass(frozen=True)
class Endpoint:
    """What the peer needs to connect an RC queue pair to ours."""

    lid: int
    gid: str  # "fe80:0000:...", 8 groups of 4 hex digits; all zero on InfiniBand without GRH
    qpn: int
    psn: int
    mtu: int  # an ibv_mtu value: 1 (256 bytes) .. 5 (4096 bytes)
    gid_type: str = "ib"  # one of GID_TYPES: both ends must use the same

    @classmethod
    def from_wire(cls, data: object) -> Endpoint:
        if not isinstance(data, dict):
            raise ProtocolError("endpoint must be an object")
        gid = _text(data, "gid").lower()
        if not _GID.match(gid):
            raise ProtocolError(f"gid must look like fe80:0000:...:0001, got {gid!r}")
        gid_type = data.get("gid_type")
        if gid_type not in GID_TYPES:
            raise ProtocolError(f"gid_type must be one of {', '.join(GID_TYPES)}, got {gid_type!r}")
        return cls(
            gid_type=gid_type,
            lid=_int(data, "lid", 0, 0xFFFF),
            gid=gid,
            qpn=_int(data, "qpn", 1, 0xFFFFFF),
            psn=_int(data, "psn", 0, 0xFFFFFF),
            mtu=_int(data, "mtu", 1, 5),
        )


@dataclass(frozen=True)
class Offer:
    """store -> worker: push ``model`` (``size`` bytes, ``digest``) in ``chunk_bytes`` chunks."""

    model: str
    size: int
    digest: str  # "algorithm:hex", see model_swap.digest
    chunk_bytes: int
    endpoint: Endpoint
    # The worker's WORKER_TOKEN, when it has one (never shown in reprs or logs).
    token: str = field(default="", repr=False)
    type = "offer"

    @classmethod
    def from_wire(cls, data: dict) -> Offer:
        try:
            model = validate_model_name(data.get("model"))
        except InvalidModelName as err:
            raise ProtocolError(f"model: {err}") from None
        return cls(
            model=model,
            size=_int(data, "size", 0, 2**63 - 1),
            digest=_digest(data),
            chunk_bytes=_int(data, "chunk_bytes", MIN_CHUNK_BYTES, MAX_CHUNK_BYTES),
            endpoint=Endpoint.from_wire(data.get("endpoint")),
            token=_optional_text(data, "token"),
        )


@dataclass(frozen=True)
class Accept:
    """worker -> store: connect to ``endpoint``; ``credits`` receive buffers are posted."""

    endpoint: Endpoint
    credits: int
    type = "accept"

    @classmethod
    def from_wire(cls, data: dict) -> Accept:
        return cls(
            endpoint=Endpoint.from_wire(data.get("endpoint")),
            credits=_int(data, "credits", 1, MAX_CREDITS),
        )


@dataclass(frozen=True)
class Credit:
    """worker -> store: ``count`` more chunks may be sent."""

    count: int
    type = "credit"

    @classmethod
    def from_wire(cls, data: dict) -> Credit:
        return cls(count=_int(data, "count", 1, MAX_CREDITS))


@dataclass(frozen=True)
class Ack:
    """worker -> store: the whole file is in the cache with this size and digest."""

    size: int
    digest: str
    type = "ack"

    @classmethod
    def from_wire(cls, data: dict) -> Ack:
        return cls(size=_int(data, "size", 0, 2**63 - 1), digest=_digest(data))


@dataclass(frozen=True)
class _Reason:
    reason: str

    @classmethod
    def from_wire(cls, data: dict):
        return cls(reason=_text(data, "reason")[:2000])


class Refuse(_Reason):
    """worker -> store: the offer is declined; nothing was set up."""

    type = "refuse"


class Nack(_Reason):
    """worker -> store: the push failed and the worker kept nothing."""

    type = "nack"


class Abort(_Reason):
    """store -> worker: the store gives up on this push."""

    type = "abort"


Message = Offer | Accept | Refuse | Credit | Abort | Ack | Nack
MESSAGES = {cls.type: cls for cls in (Offer, Accept, Refuse, Credit, Abort, Ack, Nack)}


def encode(message: Message) -> bytes:
    """The framed wire form of ``message``."""
    body = {"type": message.type, "protocol": PROTOCOL, **asdict(message)}
    payload = json.dumps(body, separators=(",", ":")).encode()
    if len(payload) > MAX_FRAME_BYTES:
        raise ProtocolError(f"a {message.type} message is larger than {MAX_FRAME_BYTES} bytes")
    return _HEADER.pack(len(payload)) + payload


def decode(payload: bytes) -> Message:
    """Parse one frame's payload; raises ProtocolError naming what is wrong."""
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProtocolError(f"not a JSON message: {err}") from None
    if not isinstance(data, dict):
        raise ProtocolError("a message must be a JSON object")
    if data.get("protocol") != PROTOCOL:
        raise ProtocolError(
            f"protocol version {data.get('protocol')!r} is not supported (this side speaks "
            f"{PROTOCOL})"
        )
    kind = MESSAGES.get(data.get("type"))
    if kind is None:
        raise ProtocolError(f"unknown message type {data.get('type')!r}")
    return kind.from_wire(data)


# -- decisions -----------------------------------------------------------------------


def check_ack(reply: Message, size: int, digest: str) -> Ack:
    """The worker's final word on a push: an Ack matching what was sent, or TransferFailed."""
    if isinstance(reply, Nack):
        raise TransferFailed(f"the worker kept nothing: {reply.reason}")
    if not isinstance(reply, Ack):
        raise ProtocolError(f"expected ack or nack, got {reply.type}")
    if reply.size != size or reply.digest != digest.lower():
        raise TransferFailed(
            f"the worker acknowledged {reply.size} bytes with digest {reply.digest}, "
            f"but {size} bytes with digest {digest.lower()} were sent"
        )
    return reply


def check_gid_types(local: Endpoint, remote: Endpoint) -> None:
    """RdmaUnavailable unless both ends address each other the same way (IB, RoCE v1 or v2)."""
    if local.gid_type != remote.gid_type:
        raise RdmaUnavailable(
            f"GID types differ: this side uses {local.gid_type}, the peer {remote.gid_type} "
            "(choose matching GIDs with RDMA_GID_INDEX on both sides)"
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
        (length,) = _HEADER.unpack(self._exactly(_HEADER.size))
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
