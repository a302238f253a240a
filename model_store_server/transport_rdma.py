"""Pushing model files to the worker over RDMA verbs (TRANSPORT=rdma).

``RdmaTransport`` connects the control channel to the worker's RDMA listener
(WORKER_RDMA_HOST:WORKER_RDMA_PORT), sets up its own queue pair, offers the
file (see ``model_swap.rdma_protocol``), then SENDs it chunk by chunk from a
small registered ring: a chunk goes out only when the worker has granted a
credit (a posted receive buffer) and the ring has a slot whose previous send
has completed. The push succeeds only when the worker's acknowledgement names
the size and sha256 that were sent. To load, it then calls the worker's HTTP
``POST /load_model_from_local_store``; control calls stay HTTP.

Any RDMA failure raises ``RdmaPushFailed`` (502) naming the cause; the worker
keeps no partial file, because it writes through ``ModelCache.receive``.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from pathlib import Path

from model_store_server.transport import PushResult, Transport
from model_store_server.worker_client import WorkerClient, WorkerError
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
    TransferFailed,
    check_ack,
)
from model_swap.rdma_verbs import RcEndpoint

# Bytes per registered ring buffer (one RDMA SEND each).
CHUNK_BYTES = 1024 * 1024

logger = logging.getLogger(__name__)

RING_SLOTS = 4


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
    ):
        self._token = token
        self._client = client
        self.host = host
        self.port = port
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self.chunk_bytes = chunk_bytes
        self.slots = slots

    def push(self, model: str, path: Path, *, sha256: str, load: bool) -> PushResult:
        size = path.stat().st_size
        started = time.perf_counter()
        try:
            self._send(model, path, size, sha256)
        except RdmaError as err:
            raise RdmaPushFailed(
                f"RDMA push of {model} to {self.host}:{self.port} failed: {err}"
            ) from err
        if load:
            self._client.load_local(model)
        return PushResult(model, size, time.perf_counter() - started, self.name)

    def _send(self, model: str, path: Path, size: int, sha256: str) -> None:
        with (
            ControlChannel.connect(
                self.host,
                self.port,
                connect_timeout=self._connect_timeout,
                timeout=self._read_timeout,
            ) as channel,
            self._endpoint() as endpoint,
        ):
            channel.send(
                Offer(model, size, sha256, self.chunk_bytes, endpoint.local(), token=self._token)
            )
            reply = channel.receive()
            if not isinstance(reply, Accept):
                reason = getattr(reply, "reason", f"unexpected {reply.type}")
                raise RdmaUnavailable(f"the worker refused the push: {reason}")
            try:
                endpoint.connect(reply.endpoint)
                with open(path, "rb") as source:
                    final = self._stream(endpoint, channel, source, size, reply.credits)
                check_ack(final or self._final_reply(channel), size, sha256)
            except BaseException as err:
                channel.send_quietly(Abort(str(err) or type(err).__name__))
                raise
        logger.debug("RDMA push of %s acknowledged", model)

    def _endpoint(self) -> RcEndpoint:
        try:
            return RcEndpoint(self.slots, self.chunk_bytes)
        except RdmaUnavailable as err:
            raise RdmaUnavailable(f"RDMA is not usable on the store: {err}") from err

    def _stream(
        self, endpoint: RcEndpoint, channel: ControlChannel, source, size: int, credits: int
    ) -> Ack | None:
        """SEND ``size`` bytes of ``source``: pipelined, at most ``credits`` chunks ahead.

        Returns once every send has completed, with the worker's ack if it
        already arrived (it may overtake the last send completions).
        """
        final = None
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
            for slot, _ in endpoint.poll(wait=0.0 if progressed else 0.001):
                free.append(slot)
                in_flight -= 1
                progressed = True
            while final is None and channel.pending():
                message = channel.receive()
                if isinstance(message, Credit):
                    credits += message.count
                elif isinstance(message, Nack):
                    raise TransferFailed(f"the worker kept nothing: {message.reason}")
                elif isinstance(message, Ack) and sent == size:
                    final = message
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
        return final

    @staticmethod
    def _final_reply(channel: ControlChannel):
        """The ack or nack, skipping credits for the last chunks."""
        while True:
            message = channel.receive()
            if not isinstance(message, Credit):
                return message
