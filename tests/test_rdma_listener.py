"""The worker's RDMA listener, for real over loopback TCP: the handshake and the final ack.

The acknowledgement tests feed ``answer_push`` the model file itself (what the
receive ring would deliver) and check that the store side of a real TCP
connection gets an ack carrying the size and digest ModelCache verified, or a
nack naming why nothing was kept. Pushes over a ring run in
``test_rdma_fake.py`` (in-memory fake verbs) and in the rdma-marked tests.
"""

from __future__ import annotations

import struct
from dataclasses import replace
from pathlib import Path

import pytest

from inference_worker.model_cache import ModelCache
from inference_worker.rdma_listener import RingReader, answer_push
from model_swap.digest import file_digest
from model_swap.rdma_protocol import (
    Ack,
    ControlChannel,
    Endpoint,
    Nack,
    Offer,
    Refuse,
    TransferFailed,
    check_ack,
    encode,
    sign_offer,
)
from tests.conftest import A
from tests.rdma_support import RDMA_PROBLEM, joined_channels, start_rdma_worker, without_rdma

# What a store sends in its offer (the listener refuses before using it on this machine).
LINK_LOCAL_GID = "fe80:0000:0000:0000:0000:0000:0000:0001"
STORE_ENDPOINT = Endpoint(lid=0, gid=LINK_LOCAL_GID, qpn=17, psn=5, mtu=3, gid_type="roce-v2")


@pytest.fixture
def rdma_worker(start_worker, request):
    return start_rdma_worker(start_worker, request)


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def connect(worker) -> ControlChannel:
    return ControlChannel.connect("127.0.0.1", worker.rdma_port, connect_timeout=5, timeout=10)


# -- the handshake, against a real worker's listener ------------------------------------


def test_the_listener_starts_only_when_enabled(worker, rdma_worker):
    assert "rdma_listener" not in worker.app.extensions
    with connect(rdma_worker):
        pass  # accepts TCP connections


@without_rdma
def test_an_offer_is_refused_naming_why_rdma_is_unusable(rdma_worker, models_dir, caplog):
    path = models_dir / A
    with connect(rdma_worker) as channel:
        channel.send(Offer(A, path.stat().st_size, file_digest(path), 1 << 20, STORE_ENDPOINT))
        reply = channel.receive()
    assert reply == Refuse(RDMA_PROBLEM)
    assert f"refused the RDMA push of {A}" in caplog.text
    assert Path(rdma_worker.app.extensions["model_cache"].directory).exists()
    assert not any(Path(rdma_worker.app.extensions["model_cache"].directory).iterdir())


@pytest.mark.parametrize(
    ("frame", "complaint"),
    [
        (frame(b"hello"), "not a JSON message"),
        (frame(b'{"type":"ack","protocol":3}'), "size must be an integer"),
        (encode(Nack("x")), "expected an offer, got nack"),
        (frame(b'{"type":"offer","protocol":0}'), "protocol version 0"),
    ],
)
def test_a_bad_opening_message_is_refused_with_the_reason(rdma_worker, frame, complaint):
    with connect(rdma_worker) as channel:
        channel.sock.sendall(frame)
        reply = channel.receive()
    assert isinstance(reply, Refuse)
    assert complaint in reply.reason


def test_an_offer_for_an_unsafe_name_is_refused(rdma_worker):
    with connect(rdma_worker) as channel:
        body = encode(Offer(A, 10, "blake3:" + "ab" * 32, 1 << 20, STORE_ENDPOINT))
        channel.sock.sendall(body.replace(A.encode(), b"../x.gguf".ljust(len(A), b"f")))
        reply = channel.receive()
    assert isinstance(reply, Refuse)
    assert "model name must be a plain file name" in reply.reason


def test_a_connection_closed_before_the_offer_is_harmless(rdma_worker, caplog):
    with connect(rdma_worker):
        pass
    with connect(rdma_worker) as channel:  # the listener still serves
        channel.sock.sendall(b"\x00\x00")
    with connect(rdma_worker) as channel:
        channel.sock.sendall(frame(b"{"))
        assert isinstance(channel.receive(), Refuse)


# -- the final acknowledgement, against a real ModelCache -------------------------------


@pytest.fixture
def store_and_worker_ends():
    """The store's and the worker's ControlChannel over one real loopback TCP connection."""
    with joined_channels(10) as pair:
        yield pair


def push_blocks(store_and_worker_ends, cache, path, *, size=None, digest=None, blocks=None):
    """Run the worker's answer_push on the file (or ``blocks``, as the ring would deliver
    them); return (received, the store's reply)."""
    store, worker = store_and_worker_ends
    offer = Offer(
        A,
        size if size is not None else path.stat().st_size,
        digest or file_digest(path),
        1 << 16,
        STORE_ENDPOINT,
    )
    with open(path, "rb") as source:
        stream = RingReader(iter(blocks)) if blocks is not None else source
        received = answer_push(worker, cache, offer, stream)
    return received, store.receive()


def test_the_ack_carries_the_size_and_digest_of_the_file_on_disk(
    store_and_worker_ends, tmp_path, models_dir
):
    cache = ModelCache(tmp_path / "cache")
    path = models_dir / A
    received, reply = push_blocks(store_and_worker_ends, cache, path)
    assert reply == Ack(path.stat().st_size, file_digest(path))
    assert check_ack(reply, path.stat().st_size, file_digest(path))
    assert file_digest(cache.path(A)) == file_digest(path) == received.digest
    assert sorted(p.name for p in cache.directory.iterdir()) == [A]


@pytest.mark.parametrize(
    ("damage", "complaint"),
    [
        ("digest", "the received tiny-a.gguf has digest blake3:"),
        ("short", "body ended after"),
        ("long", "body is longer than the announced"),
        ("not-gguf", "is not a GGUF file"),
        ("no-space", "the cache's disk has"),
    ],
)
def test_a_nack_names_the_cause_and_nothing_is_kept(
    store_and_worker_ends, tmp_path, models_dir, damage, complaint
):
    cache = ModelCache(tmp_path / "cache")
    path = models_dir / A
    size = path.stat().st_size
    kwargs = {
        "digest": {"digest": "blake3:" + "00" * 32},
        "short": {"size": size + 1},
        "long": {"size": size - 1},
        "not-gguf": {"blocks": [memoryview(b"NOPE" + b"\0" * (size - 4))]},
        "no-space": {"size": 1 << 60},
    }[damage]
    received, reply = push_blocks(store_and_worker_ends, cache, path, **kwargs)
    assert received is None
    assert isinstance(reply, Nack)
    assert complaint in reply.reason
    with pytest.raises(TransferFailed, match="the worker kept nothing"):
        check_ack(reply, size, file_digest(path))
    assert list(cache.directory.iterdir()) == []  # no file, no temporary file


def test_a_transfer_that_breaks_off_is_nacked_and_leaves_nothing(
    store_and_worker_ends, tmp_path, models_dir
):
    cache = ModelCache(tmp_path / "cache")
    path = models_dir / A

    def blocks_then_abort():
        with open(path, "rb") as source:
            yield memoryview(source.read(1 << 16))
        raise TransferFailed("the store aborted: disk read error")

    received, reply = push_blocks(store_and_worker_ends, cache, path, blocks=blocks_then_abort())
    assert received is None
    assert reply == Nack("the store aborted: disk read error")
    assert list(cache.directory.iterdir()) == []


def test_with_a_worker_token_an_offer_not_signed_with_it_is_refused(
    start_worker, request, models_dir
):
    token = "worker-secret-0123456789"
    worker = start_rdma_worker(start_worker, request, worker_token=token)
    path = models_dir / A
    offer = Offer(A, path.stat().st_size, file_digest(path), 1 << 20, STORE_ENDPOINT)
    for presented, why in (
        (offer, "the offer is not signed"),
        (sign_offer(offer, "wrong-secret-0123456789"), "invalid signature"),
        (replace(sign_offer(offer, token), size=1), "invalid signature"),  # altered after
    ):
        with connect(worker) as channel:
            channel.send(presented)
            reply = channel.receive()
        assert reply == Refuse(f"unauthorized: {why}")
    with connect(worker) as channel:  # signed with the token the offer gets past the check
        channel.send(sign_offer(offer, token))
        reply = channel.receive()
    assert isinstance(reply, Refuse) and "unauthorized" not in reply.reason
    signed = sign_offer(offer, token)
    assert token not in repr(signed) and token.encode() not in encode(signed)
