"""The RDMA push protocol: how the store and a worker's listener exchange one push.

An RDMA push moves the model's bytes over an RC queue pair, but the two sides
first meet over a plain TCP connection to the worker's RDMA listener
(WORKER_RDMA_HOST:WORKER_RDMA_PORT), which carries everything that is not bulk
data. One push, one connection:

1. store -> worker ``offer``: model name, size, digest (``blake3:<hex>``, see
   ``model_swap.digest``), chunk size, and the store's queue pair address
   (``Endpoint``: LID, GID, GID type, QPN, PSN, MTU); with WORKER_TOKEN, a
   signature over all of it (``sign_offer``, as ``model_swap.worker_auth``
   signs HTTP requests: an HMAC of the token, a timestamp and a nonce);
2. worker -> store ``accept`` with the worker's ``Endpoint``, its number of
   receive credits (posted receive buffers of one chunk each) and, with
   WORKER_TOKEN, its proof (an HMAC of the offer's signature), or ``refuse``
   with the reason (bad or unsigned offer, a GID type that differs from the
   worker's, no RDMA on the worker, too many offers at once). The store sends
   nothing to a worker whose proof does not hold;
3. the store SENDs the file in chunks over the queue pair, at most one chunk
   per credit; the worker answers each chunk it has written to disk with a
   ``credit`` once it has reposted that buffer. The store may ``abort``;
4. worker -> store ``ack`` with the size and digest of the file it renamed
   into its cache, or ``nack`` with the reason it kept nothing. An ack that
   matches what was sent is final: the file is in place, whatever the queue
   pair reports afterwards.

Each message is a JSON object preceded by its length as 4 big-endian bytes.
The messages, their framing and the shared decisions are ``rdma_messages``;
the control connection and the queue pair's interface ``rdma_channel``; this
module re-exports both. None of them holds verbs code or imports pyverbs, so
both services and the tests use them on any machine. ``RdmaEndpoint`` is the interface of one side's
queue pair: ``model_swap.rdma_verbs.RcEndpoint`` implements it over real verbs,
``model_swap.rdma_fake.FakeFabric`` in memory for the tests.
"""

from model_swap.rdma_channel import ControlChannel, EndpointFactory, RdmaEndpoint
from model_swap.rdma_messages import (
    DEFAULT_CHUNK_BYTES,
    GID_TYPES,
    MAX_CHUNK_BYTES,
    MAX_CREDITS,
    MAX_FRAME_BYTES,
    MESSAGES,
    MIN_CHUNK_BYTES,
    PROTOCOL,
    RING_SLOTS,
    Abort,
    Accept,
    Ack,
    Credit,
    Endpoint,
    Message,
    Nack,
    Offer,
    ProtocolError,
    RdmaError,
    RdmaUnavailable,
    Refuse,
    TransferFailed,
    answer_offer,
    check_accept,
    check_ack,
    check_gid_types,
    check_offer,
    decode,
    encode,
    offer_claims,
    sign_offer,
)

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "GID_TYPES",
    "MAX_CHUNK_BYTES",
    "MAX_CREDITS",
    "MAX_FRAME_BYTES",
    "MESSAGES",
    "MIN_CHUNK_BYTES",
    "PROTOCOL",
    "RING_SLOTS",
    "Abort",
    "Accept",
    "Ack",
    "ControlChannel",
    "Credit",
    "Endpoint",
    "EndpointFactory",
    "Message",
    "Nack",
    "Offer",
    "ProtocolError",
    "RdmaEndpoint",
    "RdmaError",
    "RdmaUnavailable",
    "Refuse",
    "TransferFailed",
    "answer_offer",
    "check_accept",
    "check_ack",
    "check_gid_types",
    "check_offer",
    "decode",
    "encode",
    "offer_claims",
    "sign_offer",
]
