"""The RDMA push protocol's messages: errors, the seven message types, framing, decisions.

Each message is a JSON object preceded by its length as 4 big-endian bytes
(``encode``/``decode``); ``from_wire`` checks every field and raises
``ProtocolError`` naming what is wrong. ``check_ack`` and ``check_gid_types``
are the two decisions both sides share. No sockets, no verbs: see
``model_swap.rdma_protocol`` for the exchange they make up.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import asdict, dataclass, field, replace

from model_swap import worker_auth
from model_swap.digest import InvalidDigest, parse_digest
from model_swap.names import InvalidModelName, validate_model_name

PROTOCOL = 3  # 3: the offer carries a signature, the accept its proof (no token)
MAX_FRAME_BYTES = 64 * 1024
MIN_CHUNK_BYTES = 4 * 1024
MAX_CHUNK_BYTES = 16 * 1024 * 1024
MAX_CREDITS = 64
# The store's default chunk (bytes per SEND, one ring buffer) and both sides' ring length.
DEFAULT_CHUNK_BYTES = 1024 * 1024
RING_SLOTS = 4

FRAME_HEADER = struct.Struct(">I")
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
    # With WORKER_TOKEN: the store's signature over the rest (``sign_offer``); never the token.
    signature: str = field(default="", repr=False)
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
            signature=_optional_text(data, "signature"),
        )


@dataclass(frozen=True)
class Accept:
    """worker -> store: connect to ``endpoint``; ``credits`` receive buffers are posted."""

    endpoint: Endpoint
    credits: int
    # With WORKER_TOKEN: the worker's proof that it holds it (``answer_offer``).
    proof: str = field(default="", repr=False)
    type = "accept"

    @classmethod
    def from_wire(cls, data: dict) -> Accept:
        return cls(
            endpoint=Endpoint.from_wire(data.get("endpoint")),
            credits=_int(data, "credits", 1, MAX_CREDITS),
            proof=_optional_text(data, "proof"),
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
    return FRAME_HEADER.pack(len(payload)) + payload


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


# -- proving WORKER_TOKEN (model_swap.worker_auth) -----------------------------------
# The offer is signed like an HTTP request to the worker (method OFFER_METHOD, the model
# as the path, its size, digest, chunk size and the store's queue pair as the body), so
# the listener refuses a store without the token and a replayed offer; the worker's
# accept answers the signature with a proof, so the store sends no byte to a listener
# without it. The token itself never crosses the connection.

OFFER_METHOD = "RDMA-OFFER"


def offer_claims(offer: Offer) -> tuple[str, str, str]:
    """(method, path, body digest) that an offer's signature covers."""
    claims = {
        "size": offer.size,
        "digest": offer.digest,
        "chunk_bytes": offer.chunk_bytes,
        "endpoint": asdict(offer.endpoint),
    }
    body = json.dumps(claims, sort_keys=True, separators=(",", ":"))
    return OFFER_METHOD, offer.model, "sha256:" + hashlib.sha256(body.encode()).hexdigest()


def sign_offer(offer: Offer, token: str) -> Offer:
    """``offer`` signed with ``token`` (unchanged without one)."""
    if not token:
        return offer
    return replace(offer, signature=worker_auth.sign(token, *offer_claims(offer)))


def check_offer(offer: Offer, verifier: worker_auth.Verifier | None) -> None:
    """ProtocolError unless ``offer`` is signed with the worker's token (no token: any)."""
    if verifier is None:
        return
    why = verifier.check(offer.signature, *offer_claims(offer)) if offer.signature else None
    if not offer.signature or why:
        raise ProtocolError(f"unauthorized: {why or 'the offer is not signed'}")


def answer_offer(offer: Offer, token: str) -> str:
    """The worker's proof for its accept (empty without a token)."""
    return worker_auth.proof(token, offer.signature) if token else ""


def check_accept(offer: Offer, accept: Accept, token: str) -> None:
    """RdmaUnavailable unless the worker proved it holds ``token`` (no token: any)."""
    if token and not worker_auth.proof_matches(token, offer.signature, accept.proof):
        raise RdmaUnavailable("the RDMA listener did not prove it holds WORKER_TOKEN")
