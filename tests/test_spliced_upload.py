"""A sized upload through the front server is spliced socket -> pipe -> file and hashed from a
mapping of the written file (inference_worker/spliced.py): the same bytes, the same checks
and the same guarantees as the buffered path, over real loopback TCP sockets."""

from __future__ import annotations

import errno
import os
import socket
import threading

import pytest
import requests

from inference_worker.model_cache import DigestMismatch, IncompleteUpload, ModelCache, NotGGUF
from inference_worker.spliced import HASH_BLOCK, SplicedFile, can_splice
from model_swap.digest import file_digest
from model_swap.http_body import SizedBody, SlowUpload
from model_swap.serving import FrontThread
from model_swap.tiny_models import write_tiny_model
from tests.conftest import temp_files


@pytest.fixture
def tcp_pair():
    server = socket.create_server(("127.0.0.1", 0))
    theirs = socket.create_connection(server.getsockname())
    ours, _ = server.accept()
    server.close()
    ours.settimeout(10)  # as the front server sets it: the socket is non-blocking underneath
    with ours, theirs:
        yield ours, theirs


@pytest.fixture
def pipe():
    read, write = os.pipe()
    yield read, write
    os.close(read)
    os.close(write)


def test_a_sized_body_splices_the_held_bytes_then_the_socket_and_stops_at_its_length(
    tcp_pair, pipe
):
    ours, theirs = tcp_pair
    read, write = pipe
    theirs.sendall(b"defghij" + b"NEXT REQUEST")
    body = SizedBody(ours, b"abc", 10, min_rate=0)
    assert can_splice(body)
    moved = b""
    while count := body.splice_into(write, 64 * 1024):
        moved += os.read(read, count)
    assert moved == b"abcdefghij"
    assert body.done
    assert ours.recv(64) == b"NEXT REQUEST"  # never spliced past the body


def test_a_spliced_body_that_breaks_off_raises(tcp_pair, pipe):
    ours, theirs = tcp_pair
    theirs.sendall(b"abc")
    theirs.shutdown(socket.SHUT_WR)
    body = SizedBody(ours, b"", 10, min_rate=1000)
    assert body.splice_into(pipe[1], 1024) == 3
    with pytest.raises(ConnectionError, match="the request body broke off"):
        body.splice_into(pipe[1], 1024)
    assert not body.done


def test_a_spliced_body_slower_than_min_upload_rate_is_cut_when_its_window_ends(tcp_pair, pipe):
    ours, theirs = tcp_pair
    theirs.sendall(b"ab")  # 2 bytes in a 0.2 s window: 10 bytes/s, below 1000
    body = SizedBody(ours, b"", 100, min_rate=1000, window=0.2)
    with pytest.raises(SlowUpload, match=r"below MIN_UPLOAD_RATE \(1000 bytes/s\)"):
        while body.splice_into(pipe[1], 1024):
            os.read(pipe[0], 1024)


def test_a_spliced_body_waits_no_longer_than_the_sockets_timeout(tcp_pair, pipe):
    ours, _ = tcp_pair
    ours.settimeout(0.2)
    body = SizedBody(ours, b"", 100, min_rate=0)
    with pytest.raises(TimeoutError):
        body.splice_into(pipe[1], 1024)


def send_in_background(sock: socket.socket, data: bytes) -> threading.Thread:
    thread = threading.Thread(target=sock.sendall, args=(data,), daemon=True)
    thread.start()
    return thread


@pytest.fixture(scope="module")
def big_model(tmp_path_factory):
    """A model spanning several hash blocks plus a partial one."""
    path = write_tiny_model(tmp_path_factory.mktemp("spliced") / "big.gguf", size_mb=20)
    assert path.stat().st_size > 2 * HASH_BLOCK
    return path, path.read_bytes(), file_digest(path)


@pytest.mark.parametrize("held", [0, 3, 100_000])
def test_a_spliced_upload_is_kept_byte_for_byte_with_its_verified_digest(
    tcp_pair, tmp_path, big_model, held
):
    path, data, digest = big_model
    ours, theirs = tcp_pair
    cache = ModelCache(tmp_path / "cache")
    body = SizedBody(ours, data[:held], len(data), min_rate=1e6)
    sender = send_in_background(theirs, data[held:])
    received = cache.receive("big.gguf", body, len(data), digest)
    sender.join()
    assert received.digest == digest and received.nbytes == len(data)
    assert (cache.directory / "big.gguf").read_bytes() == data
    assert cache.digest("big.gguf") == digest
    assert temp_files(cache.directory) == []


def test_a_spliced_upload_with_another_digest_leaves_nothing(tcp_pair, tmp_path, big_model):
    _, data, digest = big_model
    ours, theirs = tcp_pair
    cache = ModelCache(tmp_path / "cache")
    tampered = data[:-1] + bytes([data[-1] ^ 1])  # the last byte: in the partial last block
    sender = send_in_background(theirs, tampered)
    with pytest.raises(DigestMismatch):
        cache.receive("big.gguf", SizedBody(ours, b"", len(data), min_rate=0), len(data), digest)
    sender.join()
    assert list(cache.directory.iterdir()) == []


def test_a_spliced_upload_cut_short_leaves_nothing(tcp_pair, tmp_path, big_model):
    _, data, digest = big_model
    ours, theirs = tcp_pair
    cache = ModelCache(tmp_path / "cache")
    theirs.sendall(data[: 3 * 1024 * 1024])
    theirs.shutdown(socket.SHUT_WR)  # the store was killed mid-push
    with pytest.raises(IncompleteUpload, match="broke off"):
        cache.receive("big.gguf", SizedBody(ours, b"", len(data), min_rate=0), len(data), digest)
    assert list(cache.directory.iterdir()) == []


def test_a_spliced_upload_that_is_not_gguf_is_refused_before_splicing(tcp_pair, tmp_path):
    ours, theirs = tcp_pair
    cache = ModelCache(tmp_path / "cache")
    theirs.sendall(b"GG")  # the magic split over two reads, then wrong
    body = SizedBody(ours, b"", 1000, min_rate=0)
    theirs_later = threading.Timer(0.1, theirs.sendall, (b"XX" + b"\0" * 996,))
    theirs_later.start()
    with pytest.raises(NotGGUF):
        cache.receive("x.gguf", body, 1000, None)
    theirs_later.join()
    assert list(cache.directory.iterdir()) == []


def test_a_file_that_cannot_be_spliced_into_is_written_from_the_pipe(tmp_path, pipe, monkeypatch):
    real_splice = os.splice

    def splice(src, dst, count, *args, **kwargs):
        if kwargs.get("offset_dst") is not None:  # into the file: as a filesystem without it
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_splice(src, dst, count, *args, **kwargs)

    monkeypatch.setattr(os, "splice", splice)
    hashed = []
    with open(tmp_path / "f", "w+b", buffering=0) as out:
        with SplicedFile(out.fileno(), lambda view: hashed.append(bytes(view))) as sink:
            sink.write(memoryview(b"GGUF"))
            os.write(sink.pipe, b"rest")
            sink.drain(4)
        assert (tmp_path / "f").read_bytes() == b"GGUFrest"
    assert b"".join(hashed) == b"GGUFrest"


def test_the_front_server_hands_a_sized_body_over_for_splicing_and_a_chunked_one_not():
    seen = []

    def app(environ, start_response):
        stream = environ["wsgi.input"]
        seen.append(can_splice(stream))
        while stream.read(65536):
            pass
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    with FrontThread(app) as server:
        assert requests.post(server.url, data=b"x" * 100_000, timeout=10).text == "ok"
        chunks = (b"x" * 1000 for _ in range(3))
        assert requests.post(server.url, data=chunks, timeout=10).text == "ok"
    assert seen == [True, False]


def test_a_file_that_cannot_be_mapped_is_read_back_to_be_hashed(tmp_path, pipe, monkeypatch):
    import mmap

    def no_mmap(*args, **kwargs):
        raise OSError(errno.ENODEV, "No such device")

    monkeypatch.setattr(mmap, "mmap", no_mmap)
    data = os.urandom(HASH_BLOCK + 3 * 1024 * 1024 + 5)
    hashed = []
    with (
        open(tmp_path / "f", "w+b", buffering=0) as out,
        SplicedFile(out.fileno(), lambda view: hashed.append(bytes(view))) as sink,
    ):
        sink.write(memoryview(data))
    assert b"".join(hashed) == data
