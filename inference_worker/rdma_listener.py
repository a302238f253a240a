"""The worker's RDMA listener: receives model pushes over RDMA verbs into the model cache.

Started with the worker when WORKER_RDMA=1, on WORKER_HOST:WORKER_RDMA_PORT.
It is the TCP end of the control channel (``model_swap.rdma_protocol``): for
each offer it sets up a queue pair with a small ring of posted receive
buffers, accepts, writes every chunk that lands through
``ModelCache.receive`` exactly as an HTTP upload (temporary file, GGUF magic,
size and sha256 checked, then renamed), hands the buffer back as a credit, and
acknowledges with the file's size and sha256 only once it is in place. Any
failure answers ``nack`` (or ``refuse`` before the transfer) and keeps nothing.

Where RDMA cannot work (pyverbs missing, no device) the listener still runs
and refuses each offer with that reason, so the store can say why (and fall
back to HTTP if ALLOW_FALLBACK=1). pyverbs is imported only when a push
arrives.
"""

from __future__ import annotations

import hmac
import logging
import socketserver
import time
from collections.abc import Iterator

from inference_worker.model_cache import ModelCache, NoSpace, Received, UploadRejected
from model_swap.rdma_protocol import (
    Abort,
    Accept,
    Ack,
    ControlChannel,
    Credit,
    Nack,
    Offer,
    ProtocolError,
    RdmaError,
    RdmaUnavailable,
    Refuse,
    TransferFailed,
)
from model_swap.rdma_verbs import RcEndpoint, find_port
from model_swap.serving import BackgroundServer

logger = logging.getLogger(__name__)

RING_SLOTS = 4
# Seconds the store may stay silent before sending its offer, and then between chunks.
OFFER_TIMEOUT = 10.0
IDLE_TIMEOUT = 60.0
# Seconds to keep the queue pair after the ack or nack, until the store hangs up.
LINGER_SECONDS = 5.0


def answer_push(
    channel: ControlChannel, cache: ModelCache, offer: Offer, blocks
) -> Received | None:
    """Write ``blocks`` into ``cache`` as ``offer.model``, then ack (size, sha256) or nack.

    Returns what was received, or None when the push failed and nothing was kept.
    """
    try:
        received = cache.receive(offer.model, blocks, offer.size, offer.sha256)
    except (UploadRejected, NoSpace, RdmaError, OSError) as err:
        logger.warning("RDMA push of %s failed, nothing kept: %s", offer.model, err)
        channel.send_quietly(Nack(str(err)))
        return None
    channel.send(Ack(received.nbytes, received.sha256))
    return received


def ring_blocks(endpoint, channel: ControlChannel, size: int) -> Iterator[memoryview]:
    """The pushed file's chunks, in order, as they land in ``endpoint``'s receive ring.

    A chunk's buffer is reposted and credited back to the store as soon as the
    consumer asks for the next one: a consumer that keeps chunks longer must
    copy them.
    Raises TransferFailed if the store aborts, disconnects or stalls.
    """
    received = 0
    idle_since = time.monotonic()
    while received < size:
        completions = endpoint.poll(wait=0.001)
        for slot, length in completions:
            if received + length > size:
                raise TransferFailed(f"the store sent more than the offered {size} bytes")
            received += length
            yield endpoint.view(slot)[:length]
            if received < size:
                endpoint.post_recv(slot)
                channel.send(Credit(1))
        if completions:
            idle_since = time.monotonic()
            continue
        if channel.pending():
            message = channel.receive()
            if isinstance(message, Abort):
                raise TransferFailed(f"the store aborted: {message.reason}")
            raise ProtocolError(f"unexpected {message.type} during the transfer")
        if time.monotonic() - idle_since > IDLE_TIMEOUT:
            raise TransferFailed(f"no data for {IDLE_TIMEOUT:g}s after {received} of {size} bytes")


def serve_push(
    channel: ControlChannel, cache: ModelCache, peer: str, token: str = ""
) -> Received | None:
    """Handle one control connection from offer to ack; returns what was received, if anything.

    With ``token`` set, an offer must carry the same token (compared in constant time).
    """
    try:
        offer = channel.receive(OFFER_TIMEOUT)
        if not isinstance(offer, Offer):
            raise ProtocolError(f"expected an offer, got {offer.type}")
        if token and not hmac.compare_digest(offer.token.encode(), token.encode()):
            raise ProtocolError("unauthorized: missing or invalid token")
    except ProtocolError as err:
        logger.warning("refused an RDMA push from %s: %s", peer, err)
        channel.send_quietly(Refuse(str(err)))
        return None
    except TransferFailed as err:
        logger.info("RDMA control connection from %s ended without an offer: %s", peer, err)
        return None

    try:
        endpoint = RcEndpoint(RING_SLOTS, offer.chunk_bytes)
    except RdmaError as err:
        logger.warning("refused the RDMA push of %s from %s: %s", offer.model, peer, err)
        channel.send_quietly(Refuse(str(err)))
        return None
    with endpoint:
        try:
            endpoint.connect(offer.endpoint)
            for slot in range(RING_SLOTS):
                endpoint.post_recv(slot)
        except RdmaError as err:
            logger.warning("refused the RDMA push of %s from %s: %s", offer.model, peer, err)
            channel.send_quietly(Refuse(str(err)))
            return None
        channel.send(Accept(endpoint.local(), RING_SLOTS))
        # Each chunk is copied out of the ring: the ring buffer is reposted as soon as
        # the next chunk is asked for, while the cache may still be hashing or writing it.
        chunks = (bytes(chunk) for chunk in ring_blocks(endpoint, channel, offer.size))
        received = answer_push(channel, cache, offer, chunks)
        # Tearing the queue pair down at once could drop the transport ACKs of the last
        # chunks, failing the store's sends although the file is in place.
        channel.pending(wait=LINGER_SECONDS)
    if received is not None:
        rate = received.nbytes / received.seconds / 1e6 if received.seconds > 0 else 0.0
        logger.info(
            "received %s: %d bytes in %.3fs (%.1f MB/s) over rdma",
            received.name,
            received.nbytes,
            received.seconds,
            rate,
        )
    return received


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        peer = f"{self.client_address[0]}:{self.client_address[1]}"
        with ControlChannel(self.request, timeout=IDLE_TIMEOUT) as channel:
            try:
                serve_push(channel, self.server.cache, peer, self.server.token)
            except RdmaError as err:
                logger.warning("RDMA push from %s failed: %s", peer, err)


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, address: tuple[str, int], cache: ModelCache, token: str):
        self.cache = cache
        self.token = token
        super().__init__(address, _Handler)


class RdmaListener(BackgroundServer):
    """The TCP control endpoint for RDMA pushes into one ModelCache; one thread per push.

    Binds at construction (port 0 picks a free one, see ``port``); ``start``
    returns at once; ``stop`` closes the socket and waits for the accept loop.
    Thread-safe.
    """

    def __init__(self, cache: ModelCache, host: str, port: int, *, token: str = ""):
        super().__init__(_Server((host, port), cache, token), "rdma-listener")
        self.host = host

    def start(self) -> RdmaListener:
        try:
            port = find_port()
        except RdmaUnavailable as err:
            logger.warning(
                "RDMA listener on %s:%d, but RDMA is not usable here (%s): every push "
                "will be refused with this reason",
                self.host,
                self.port,
                err,
            )
        else:
            logger.info("RDMA listener on %s:%d using %s", self.host, self.port, port.describe())
        return super().start()
