"""Pushing model files to the worker over RDMA verbs (TRANSPORT=rdma).

``RdmaTransport`` connects the control channel to the worker's RDMA listener
(WORKER_RDMA_HOST:WORKER_RDMA_PORT), sets up its own queue pair (an
``RdmaEndpoint`` from its endpoint factory: real verbs by default, the
in-memory fake in tests), offers the file (see ``model_swap.rdma_protocol``),
then SENDs it chunk by chunk from a small registered ring: a chunk goes out
only when the worker has granted a credit (a posted receive buffer) and the
ring has a slot whose previous send has completed. The push succeeds when the
worker's acknowledgement names the size and digest that were sent; such an
ack is final, whatever the queue pair reports after it (a lost transport ACK
can fail the last send's completion although the data arrived). To load, it
then calls the worker's HTTP ``POST /load_model_from_local_store``; control
calls stay HTTP. With WORKER_TOKEN the offer is signed with it and the worker's
accept must prove it holds the token before a byte is sent
(``model_swap.rdma_messages``).

This backend owns its failures: any exception from the RDMA session, an
unexpected ``TypeError`` from pyverbs included, leaves ``push`` as
``RdmaPushFailed`` (502 ``rdma_failed``, or a fallback to HTTP with
ALLOW_FALLBACK=1) naming the cause; the worker keeps no partial file,
because it writes through ``ModelCache.receive``.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from pathlib import Path

from model_store_server.transport.http import PushResult, Transport
from model_store_server.worker_client import WorkerClient, WorkerError
from model_swap.errors import cause
from model_swap.progress import current_progress
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
    RdmaEndpoint,
    RdmaError,
    RdmaUnavailable,
    TransferFailed,
    check_accept,
    check_ack,
    check_gid_types,
    sign_offer,
)
from model_swap.rdma_verbs import VerbsEndpoints

# Bytes per registered ring buffer (one RDMA SEND each), and buffers in the ring.
CHUNK_BYTES = DEFAULT_CHUNK_BYTES
# Seconds to wait for the worker's ack after a send completed with an error: the data may
# have arrived (only the transport ACK was lost), in which case the worker acks.
ACK_GRACE_SECONDS = 5.0

logger = logging.getLogger(__name__)


class RdmaPushFailed(WorkerError):
    """An RDMA push failed; the worker kept nothing. The message names the cause."""

    type = "rdma_failed"


class RdmaTransport(Transport):
    """RC SENDs from a reused ring of registered buffers, with a TCP control channel.

    Thread-safe: every push sets up and tears down its own connection and queue pair.
    """

    name = "rdma"

    def __init__(
        self,
        client: WorkerClient,
        host: str,
        port: int,
        *,
        connect_timeout: float,
        read_timeout: float,
        chunk_bytes: int = CHUNK_BYTES,
        slots: int = RING_SLOTS,
        token: str = "",
        endpoints: EndpointFactory | None = None,
    ):
        self._token = token
        self._client = client
        self.host = host
        self.port = port
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self.chunk_bytes = chunk_bytes
        self.slots = slots
        self.endpoints = endpoints or VerbsEndpoints()

    def push(self, model: str, path: Path, *, digest: str, load: bool) -> PushResult:
        """See ``Transport.push``; progress is reported once the file is sent."""
        started = time.perf_counter()
        # A file that cannot be opened is the store's problem, not RDMA's: OSError as is.
        with open(path, "rb") as source:
            size = path.stat().st_size
            try:
                self._send(model, source, size, digest)
            except Exception as err:  # noqa: BLE001 - every failure of this backend is its own
                why = str(err) if isinstance(err, RdmaError) else cause(err)
                if not isinstance(err, RdmaError):
                    logger.warning("RDMA push of %s failed unexpectedly", model, exc_info=True)
                raise RdmaPushFailed(
                    f"RDMA push of {model} to {self.host}:{self.port} failed: {why}"
                ) from err
        if (progress := current_progress()) is not None:
            progress.set_done(size)
        answer = self._client.load_local(model) if load else {}
        return PushResult(
            model,
            size,
            time.perf_counter() - started,
            self.name,
            answer.get("load_seconds"),
            answer.get("estimated_bytes"),
        )

    def _send(self, model: str, source, size: int, digest: str) -> None:
        with (
            ControlChannel.connect(
                self.host,
                self.port,
                connect_timeout=self._connect_timeout,
                timeout=self._read_timeout,
            ) as channel,
            self._endpoint() as endpoint,
        ):
            local = endpoint.local()
            offer = sign_offer(Offer(model, size, digest, self.chunk_bytes, local), self._token)
            channel.send(offer)
            reply = channel.receive()
            if not isinstance(reply, Accept):
                reason = getattr(reply, "reason", f"unexpected {reply.type}")
                raise RdmaUnavailable(f"the worker refused the push: {reason}")
            check_accept(offer, reply, self._token)
            try:
                check_gid_types(local, reply.endpoint)
                endpoint.connect(reply.endpoint)
                final = self._stream(endpoint, channel, source, size, digest, reply.credits)
                check_ack(final or self._final_reply(channel), size, digest)
            except BaseException as err:
                channel.send_quietly(Abort(str(err) or type(err).__name__))
                raise
        logger.debug("RDMA push of %s acknowledged", model)

    def _endpoint(self) -> RdmaEndpoint:
        try:
            return self.endpoints(self.slots, self.chunk_bytes)
        except RdmaUnavailable as err:
            raise RdmaUnavailable(f"RDMA is not usable on the store: {err}") from err

    def _stream(
        self,
        endpoint: RdmaEndpoint,
        channel: ControlChannel,
        source,
        size: int,
        digest: str,
        credits: int,
    ) -> Ack | None:
        """SEND ``size`` bytes of ``source``: pipelined, at most ``credits`` chunks ahead.

        Returns the worker's matching ack as soon as it arrives (it may
        overtake the last send completions, which are then not waited for),
        or None once every send has completed without one.
        """
        free = deque(range(self.slots))
        in_flight = 0
        sent = 0
        idle_since = time.monotonic()
        while sent < size or in_flight:
            progressed = False
            while sent < size and free and credits:
                slot = free.popleft()
                view = endpoint.view(slot)[: min(self.chunk_bytes, size - sent)]
                filled = source.readinto(view)
                if filled != len(view):
                    raise TransferFailed(
                        f"the file ended after {sent + filled} of {size} bytes while being sent"
                    )
                endpoint.post_send(slot, filled)
                sent += filled
                credits -= 1
                in_flight += 1
                progressed = True
            try:
                completions = endpoint.poll(wait=0.0 if progressed else 0.001)
            except TransferFailed as err:
                if sent < size:
                    raise
                return self._ack_despite(channel, size, digest, err)
            for slot, _ in completions:
                free.append(slot)
                in_flight -= 1
                progressed = True
            while channel.pending():
                message = channel.receive()
                if isinstance(message, Credit):
                    credits += message.count
                elif isinstance(message, Nack):
                    raise TransferFailed(f"the worker kept nothing: {message.reason}")
                elif isinstance(message, Ack) and sent == size:
                    return check_ack(message, size, digest)
                else:
                    raise ProtocolError(f"unexpected {message.type} during the transfer")
                progressed = True
            now = time.monotonic()
            if progressed:
                idle_since = now
            elif now - idle_since > self._read_timeout:
                raise TransferFailed(
                    f"no progress for {self._read_timeout:g}s after {sent} of {size} bytes"
                )
        return None

    def _ack_despite(
        self, channel: ControlChannel, size: int, digest: str, error: TransferFailed
    ) -> Ack:
        """Every byte was posted but a send completed with ``error``: the worker's ack decides."""
        deadline = time.monotonic() + min(ACK_GRACE_SECONDS, self._read_timeout)
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = channel.receive(timeout=left)
            except TransferFailed:
                break
            if isinstance(message, Credit):
                continue
            if isinstance(message, Ack):
                ack = check_ack(message, size, digest)
                logger.info("the worker acknowledged the whole file despite: %s", error)
                return ack
            if isinstance(message, Nack):
                raise TransferFailed(f"{error}; the worker kept nothing: {message.reason}")
            break
        raise error

    @staticmethod
    def _final_reply(channel: ControlChannel):
        """The ack or nack, skipping credits for the last chunks."""
        while True:
            message = channel.receive()
            if not isinstance(message, Credit):
                return message
