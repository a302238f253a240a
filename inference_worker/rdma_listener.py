"""The worker's RDMA listener: receives model pushes over RDMA verbs into the model cache.

Started with the worker when WORKER_RDMA=1, on WORKER_HOST:WORKER_RDMA_PORT.
It is the TCP end of the control channel (``model_swap.rdma_protocol``): for
each offer it sets up a queue pair (an ``RdmaEndpoint`` from its endpoint
factory: real verbs on RDMA_DEVICE / RDMA_DEVICE_PORT / RDMA_GID_INDEX, or
the in-memory fake in tests) with a small ring of posted receive buffers,
accepts, reads every chunk that lands through ``ModelCache.receive`` exactly
as an HTTP upload (temporary file, GGUF magic, size and digest checked, then
renamed), hands the buffer back as a credit, and acknowledges with the file's
size and digest only once it is in place. Any failure, an unexpected
exception from pyverbs included, answers ``nack`` (or ``refuse`` before the
transfer) and keeps nothing. At most WORKER_RDMA_MAX_OFFERS pushes run at
once; a further offer is refused, so the store falls back or fails at once.
With WORKER_TOKEN, an offer must be signed with it (a replayed or altered
offer is refused before any queue pair is set up) and the accept carries the
worker's proof of it; the token itself never crosses the connection.

Where RDMA cannot work (pyverbs missing, no device) the listener still runs
and refuses each offer with that reason, so the store can say why (and fall
back to HTTP if ALLOW_FALLBACK=1). pyverbs is imported only when a push
arrives (and once at start, to log which port pushes will use).
"""

from __future__ import annotations

import logging
import socketserver
import threading
import time
from collections.abc import Iterator

from inference_worker.model_cache import ModelCache, NoSpace, Received, UploadRejected
from model_swap.errors import cause
from model_swap.rdma_protocol import (
    DEFAULT_CHUNK_BYTES,
    RING_SLOTS,
    Abort,
    Accept,
    Ack,
    ControlChannel,
    Credit,
    EndpointFactory,
    Nack,
    Offer,
    ProtocolError,
    RdmaError,
    Refuse,
    TransferFailed,
    answer_offer,
    check_gid_types,
    check_offer,
)
from model_swap.rdma_setup import check_start
from model_swap.rdma_verbs import VerbsEndpoints
from model_swap.serving import BackgroundServer
from model_swap.settings import SettingsError
from model_swap.worker_auth import Verifier

logger = logging.getLogger(__name__)

# Seconds the store may stay silent before sending its offer, and then between chunks.
OFFER_TIMEOUT = 10.0
IDLE_TIMEOUT = 60.0
# Seconds to keep the queue pair after the ack or nack, until the store hangs up.
LINGER_SECONDS = 5.0


def answer_push(
    channel: ControlChannel, cache: ModelCache, offer: Offer, source
) -> Received | None:
    """Read ``source`` into ``cache`` as ``offer.model``, then ack (size, digest) or nack.

    Returns what was received, or None when the push failed and nothing was kept.
    """
    try:
        received = cache.receive(offer.model, source, offer.size, offer.digest)
    except (UploadRejected, NoSpace, RdmaError, OSError) as err:
        logger.warning("RDMA push of %s failed, nothing kept: %s", offer.model, err)
        channel.send_quietly(Nack(str(err)))
        return None
    except Exception as err:  # noqa: BLE001 - an unexpected failure is still a nack
        logger.warning("RDMA push of %s failed, nothing kept", offer.model, exc_info=True)
        channel.send_quietly(Nack(cause(err)))
        return None
    channel.send(Ack(received.nbytes, received.digest))
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


class RingReader:
    """The ring's chunks as a readable stream (``readinto``) for ``ModelCache.receive``.

    Each ``readinto`` copies (part of) the current chunk out of the ring, so
    the ring buffer can be reposted while the cache hashes and writes the copy.
    """

    def __init__(self, chunks: Iterator[memoryview]):
        self._chunks = chunks
        self._current = memoryview(b"")

    def readinto(self, buffer: memoryview) -> int:
        while not self._current:
            try:
                self._current = next(self._chunks)
            except StopIteration:
                return 0
        count = min(len(buffer), len(self._current))
        buffer[:count] = self._current[:count]
        self._current = self._current[count:]
        return count


def serve_push(
    channel: ControlChannel,
    cache: ModelCache,
    peer: str,
    token: str = "",
    endpoints: EndpointFactory | None = None,
    offers: threading.BoundedSemaphore | None = None,
    verifier: Verifier | None = None,
) -> Received | None:
    """Handle one control connection from offer to ack; returns what was received, if anything.

    With ``token`` set, an offer must be signed with it (``check_offer``: not
    older than the signature window, not replayed; ``verifier`` remembers the
    nonces) and the accept carries the worker's proof. ``offers`` bounds the
    pushes served at once: an offer that finds it exhausted is refused.
    """
    try:
        offer = channel.receive(OFFER_TIMEOUT)
        if not isinstance(offer, Offer):
            raise ProtocolError(f"expected an offer, got {offer.type}")
        if token:
            check_offer(offer, verifier or Verifier(token))
    except ProtocolError as err:
        logger.warning("refused an RDMA push from %s: %s", peer, err)
        channel.send_quietly(Refuse(str(err)))
        return None
    except TransferFailed as err:
        logger.info("RDMA control connection from %s ended without an offer: %s", peer, err)
        return None
    if offers is not None and not offers.acquire(blocking=False):
        reason = "the worker is receiving as many RDMA pushes as it allows (WORKER_RDMA_MAX_OFFERS)"
        logger.warning("refused the RDMA push of %s from %s: %s", offer.model, peer, reason)
        channel.send_quietly(Refuse(reason))
        return None
    try:
        return _receive(channel, cache, peer, offer, endpoints or VerbsEndpoints(), token)
    finally:
        if offers is not None:
            offers.release()


def _refuse(channel: ControlChannel, offer: Offer, peer: str, err: BaseException) -> None:
    reason = str(err) if isinstance(err, RdmaError) else cause(err)
    logger.warning("refused the RDMA push of %s from %s: %r", offer.model, peer, err)
    channel.send_quietly(Refuse(reason))


def _receive(
    channel: ControlChannel, cache: ModelCache, peer: str, offer: Offer, endpoints, token: str
) -> Received | None:
    try:
        endpoint = endpoints(RING_SLOTS, offer.chunk_bytes)
    except Exception as err:  # noqa: BLE001 - RdmaUnavailable, or a surprise from pyverbs
        _refuse(channel, offer, peer, err)
        return None
    with endpoint:
        try:
            local = endpoint.local()
            check_gid_types(local, offer.endpoint)
            endpoint.connect(offer.endpoint)
            for slot in range(RING_SLOTS):
                endpoint.post_recv(slot)
        except Exception as err:  # noqa: BLE001 - as above
            _refuse(channel, offer, peer, err)
            return None
        channel.send(Accept(local, RING_SLOTS, proof=answer_offer(offer, token)))
        source = RingReader(ring_blocks(endpoint, channel, offer.size))
        received = answer_push(channel, cache, offer, source)
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
        server = self.server
        with ControlChannel(self.request, timeout=IDLE_TIMEOUT) as channel:
            try:
                serve_push(
                    channel,
                    server.cache,
                    peer,
                    server.token,
                    server.endpoints,
                    server.offers,
                    server.verifier,
                )
            except RdmaError as err:
                logger.warning("RDMA push from %s failed: %s", peer, err)
            except Exception:  # noqa: BLE001 - one push's surprise must not kill the listener
                logger.exception("RDMA push from %s failed unexpectedly", peer)


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        cache: ModelCache,
        token: str,
        endpoints: EndpointFactory,
        max_offers: int,
    ):
        self.cache = cache
        self.token = token
        self.verifier = Verifier(token) if token else None  # one nonce memory: no replays
        self.endpoints = endpoints
        self.offers = threading.BoundedSemaphore(max_offers)
        super().__init__(address, _Handler)


class RdmaListener(BackgroundServer):
    """The TCP control endpoint for RDMA pushes into one ModelCache; one thread per push,
    at most ``max_offers`` at once.

    Binds at construction (port 0 picks a free one, see ``port``); ``start``
    returns at once; ``stop`` closes the socket and waits for the accept loop.
    ``endpoints`` builds each push's queue pair (default: real verbs on the
    first active port). Thread-safe.
    """

    def __init__(
        self,
        cache: ModelCache,
        host: str,
        port: int,
        *,
        token: str = "",
        endpoints: EndpointFactory | None = None,
        max_offers: int = 2,
    ):
        self.endpoints = endpoints or VerbsEndpoints()
        self.max_offers = max_offers
        super().__init__(
            _Server((host, port), cache, token, self.endpoints, max_offers), "rdma-listener"
        )
        self.host = host

    def start(self) -> RdmaListener:
        """Start serving; raises SettingsError if RDMA is usable here but RLIMIT_MEMLOCK
        cannot pin ``max_offers`` rings of the default chunk size."""
        try:
            check_start(
                self.endpoints,
                self.max_offers * RING_SLOTS * DEFAULT_CHUNK_BYTES,
                f"the RDMA listener on {self.host}:{self.port} "
                f"(WORKER_RDMA_MAX_OFFERS={self.max_offers})",
                "WORKER_RDMA=1",
                unusable=f"the listener on {self.host}:{self.port} refuses every push with "
                "this reason",
            )
        except SettingsError:
            self.stop()
            raise
        return super().start()
