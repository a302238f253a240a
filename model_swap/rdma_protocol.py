"""The RDMA push protocol's out-of-band control channel: messages, framing, decisions.

An RDMA push moves the model's bytes over an RC queue pair, but the two sides
first meet over a plain TCP connection to the worker's RDMA listener
(WORKER_RDMA_HOST:WORKER_RDMA_PORT), which carries everything that is not bulk
data. One push, one connection:

1. store -> worker ``offer``: model name, size, sha256, chunk size, and the
   store's queue pair address (``Endpoint``: LID, GID, QPN, PSN, MTU);
2. worker -> store ``accept`` with the worker's ``Endpoint`` and its number of
   receive credits (posted receive buffers of one chunk each), or ``refuse``
   with the reason (bad offer, no RDMA on the worker);
3. the store SENDs the file in chunks over the queue pair, at most one chunk
   per credit; the worker answers each chunk it has written to disk with a
   ``credit`` once it has reposted that buffer. The store may ``abort``;
4. worker -> store ``ack`` with the size and sha256 of the file it renamed
   into its cache, or ``nack`` with the reason it kept nothing.

Each message is a JSON object preceded by its length as 4 big-endian bytes.
This module holds no verbs code and imports no pyverbs, so both services and
the tests use it on any machine.
"""

from __future__ import annotations

import contextlib
import json
import re
import select
import socket
import struct
from dataclasses import asdict, dataclass, field

from model_swap.names import InvalidModelName, validate_model_name

PROTOCOL = 1
MAX_FRAME_BYTES = 64 * 1024
MIN_CHUNK_BYTES = 4 * 1024
MAX_CHUNK_BYTES = 16 * 1024 * 1024
MAX_CREDITS = 64

_HEADER = struct.Struct(">I")
_GID = re.compile(r"^[0-9a-f]{4}(:[0-9a-f]{4}){7}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


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


def _sha256(data: dict, key: str = "sha256") -> str:
    value = _text(data, key).lower()
    if not _SHA256.match(value):
        raise ProtocolError(f"{key} must be 64 hexadecimal characters")
    return value


@dataclass(frozen=True)
class Endpoint:
    """What the peer needs to connect an RC queue pair to ours."""

    lid: int
    gid: str  # "fe80:0000:...", 8 groups of 4 hex digits; all zero on InfiniBand without GRH
    qpn: int
    psn: int
    mtu: int  # an ibv_mtu value: 1 (256 bytes) .. 5 (4096 bytes)

    @classmethod
    def from_wire(cls, data: object) -> Endpoint:
        if not isinstance(data, dict):
            raise ProtocolError("endpoint must be an object")
        gid = _text(data, "gid").lower()
        if not _GID.match(gid):
            raise ProtocolError(f"gid must look like fe80:0000:...:0001, got {gid!r}")
        return cls(
            lid=_int(data, "lid", 0, 0xFFFF),
            gid=gid,
            qpn=_int(data, "qpn", 1, 0xFFFFFF),
            psn=_int(data, "psn", 0, 0xFFFFFF),
            mtu=_int(data, "mtu", 1, 5),
        )


@dataclass(frozen=True)
class Offer:
    """store -> worker: push ``model`` (``size`` bytes, ``sha256``) in ``chunk_bytes`` chunks."""

    model: str
    size: int
    sha256: str
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
            sha256=_sha256(data),
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
    """worker -> store: the whole file is in the cache with this size and sha256."""

    size: int
    sha256: str
    type = "ack"

    @classmethod
    def from_wire(cls, data: dict) -> Ack:
        return cls(size=_int(data, "size", 0, 2**63 - 1), sha256=_sha256(data))


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


def check_ack(reply: Message, size: int, sha256: str) -> Ack:
    """The worker's final word on a push: an Ack matching what was sent, or TransferFailed."""
    if isinstance(reply, Nack):
        raise TransferFailed(f"the worker kept nothing: {reply.reason}")
    if not isinstance(reply, Ack):
        raise ProtocolError(f"expected ack or nack, got {reply.type}")
    if reply.size != size or reply.sha256 != sha256.lower():
        raise TransferFailed(
            f"the worker acknowledged {reply.size} bytes with sha256 {reply.sha256}, "
            f"but {size} bytes with sha256 {sha256.lower()} were sent"
        )
    return reply


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
            raise RdmaUnavailable(f"RDMA listener at {host}:{port} is unreachable: {err}") from err
        return cls(sock, timeout=timeout)

    def send(self, message: Message) -> None:
        try:
            self.sock.sendall(encode(message))
        except OSError as err:
            raise TransferFailed(f"control connection broke while sending: {err}") from err

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
                raise TransferFailed(f"control connection broke: {err}") from err
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
