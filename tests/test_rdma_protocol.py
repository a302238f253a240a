"""The RDMA control protocol: messages, their validation, the final ack, over real loopback TCP."""

from __future__ import annotations

import json
import socket
import struct

import pytest

from model_swap.rdma_protocol import (
    Abort,
    Accept,
    Ack,
    ControlChannel,
    Credit,
    Endpoint,
    Nack,
    Offer,
    ProtocolError,
    RdmaUnavailable,
    Refuse,
    TransferFailed,
    check_ack,
    decode,
    encode,
)
from tests.rdma_support import joined_channels

SHA = "blake3:" + "ab" * 32
ENDPOINT = Endpoint(
    lid=7,
    gid="fe80:0000:0000:0000:0202:c9ff:fe00:0001",
    qpn=0x1234,
    psn=99,
    mtu=3,
    gid_type="roce-v2",
)


def payload(message) -> bytes:
    return encode(message)[4:]


@pytest.mark.parametrize(
    "message",
    [
        Offer("tiny-a.gguf", 473600, SHA, 1 << 20, ENDPOINT),
        Accept(ENDPOINT, 4),
        Refuse("no RDMA device"),
        Credit(1),
        Abort("file changed"),
        Ack(473600, SHA),
        Nack("sha256 differs"),
    ],
)
def test_every_message_survives_the_wire(message):
    frame = encode(message)
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4
    assert decode(frame[4:]) == message


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"protocol": 1}, "protocol version 1 is not supported"),
        ({"type": "gimme"}, "unknown message type"),
        ({"model": "../etc/passwd.gguf"}, "model: model name must be a plain file name"),
        ({"model": "notes.txt"}, "must end in .gguf"),
        ({"size": -1}, "size must be an integer"),
        ({"size": "12"}, "size must be an integer"),
        ({"digest": "blake3:xyz"}, "digest: a blake3 digest must be 64 hexadecimal"),
        ({"digest": "md5:" + "ab" * 32}, "digest: unknown digest algorithm 'md5'"),
        ({"endpoint": {**ENDPOINT.__dict__, "gid_type": "roce-v3"}}, "gid_type must be one of"),
        ({"chunk_bytes": 16}, "chunk_bytes must be an integer"),
        ({"endpoint": {**ENDPOINT.__dict__, "gid": "fe80::1"}}, "gid must look like"),
        ({"endpoint": {**ENDPOINT.__dict__, "qpn": 1 << 24}}, "qpn must be an integer"),
        ({"endpoint": {**ENDPOINT.__dict__, "mtu": 9}}, "mtu must be an integer"),
        ({"endpoint": None}, "endpoint must be an object"),
    ],
)
def test_offers_are_validated(change, complaint):
    body = json.loads(payload(Offer("tiny-a.gguf", 10, SHA, 1 << 20, ENDPOINT)))
    body.update(change)
    with pytest.raises(ProtocolError, match=complaint.replace(".", r"\.")):
        decode(json.dumps(body).encode())


def test_garbage_is_a_protocol_error():
    with pytest.raises(ProtocolError, match="not a JSON message"):
        decode(b"\xff\x00 hello")
    with pytest.raises(ProtocolError, match="must be a JSON object"):
        decode(b"[1, 2]")


def test_check_ack_accepts_only_what_was_sent():
    assert check_ack(Ack(10, SHA), 10, SHA.upper()) == Ack(10, SHA)
    with pytest.raises(TransferFailed, match="the worker kept nothing: disk full"):
        check_ack(Nack("disk full"), 10, SHA)
    with pytest.raises(TransferFailed, match="acknowledged 9 bytes"):
        check_ack(Ack(9, SHA), 10, SHA)
    with pytest.raises(TransferFailed, match=f"but 10 bytes with digest blake3:{'cd' * 32}"):
        check_ack(Ack(10, SHA), 10, "blake3:" + "cd" * 32)
    with pytest.raises(ProtocolError, match="expected ack or nack, got credit"):
        check_ack(Credit(1), 10, SHA)


@pytest.fixture
def channel_pair():
    """Two ControlChannels joined by a real TCP connection on 127.0.0.1."""
    with joined_channels(5) as pair:
        yield pair


def test_messages_cross_a_real_connection(channel_pair):
    client, server = channel_pair
    assert not server.pending()
    client.send(Offer("tiny-a.gguf", 10, SHA, 1 << 20, ENDPOINT))
    assert server.pending(wait=5)
    assert server.receive() == Offer("tiny-a.gguf", 10, SHA, 1 << 20, ENDPOINT)
    server.send(Credit(1))
    server.send(Ack(10, SHA))
    assert client.receive() == Credit(1)
    assert check_ack(client.receive(), 10, SHA).size == 10


def test_a_silent_or_closed_peer_fails_the_transfer(channel_pair):
    client, server = channel_pair
    with pytest.raises(TransferFailed, match="sent nothing for 0.2s"):
        client.receive(timeout=0.2)
    server.close()
    with pytest.raises(TransferFailed, match="closed the control connection"):
        client.receive()
    client.send_quietly(Abort("the peer is gone; this must not raise"))


def test_an_oversized_frame_is_refused(channel_pair):
    client, server = channel_pair
    client.sock.sendall(struct.pack(">I", 1 << 20))
    with pytest.raises(ProtocolError, match="larger than"):
        server.receive()


def test_an_unreachable_listener_is_rdma_unavailable():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here once closed
    with pytest.raises(RdmaUnavailable, match=f"RDMA listener at 127.0.0.1:{port} is unreachable"):
        ControlChannel.connect("127.0.0.1", port, connect_timeout=2, timeout=2)
