"""Integrity: a model on the worker is exactly the store's file, or nothing at all."""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from model_swap.digest import file_digest, file_sha256
from model_swap.tiny_models import write_tiny_model
from tests.conftest import (
    A,
    B,
    ServiceProcess,
    ask,
    assert_agree,
    cache_dir,
    files_on_disk,
    step,
    temp_files,
    wait_for,
    worker_status,
)
from tests.test_faults import BIG


def test_a_file_that_is_not_gguf_is_refused_before_anything_is_evicted(
    worker, start_store, models_dir
):
    (models_dir / "broken.gguf").write_bytes(b"GGUF" + b"\0" * 64)  # GGUF version 0
    store = start_store(worker, max_cache_size=1)
    ask(store, A)
    r = ask(store, "broken.gguf")
    assert r.status_code == 422
    assert r.json()["error"]["type"] == "model_unloadable"
    assert r.headers["x-should-retry"] == "false"
    assert worker_status(worker)["received"]["uploads"] == 1  # A only: nothing pushed
    step(store, worker, A, "already_loaded")  # A was neither evicted nor unloaded
    assert_agree(store, worker)


def test_a_file_llama_cpp_cannot_load_is_remembered_per_version(worker, start_store, models_dir):
    broken = models_dir / "broken.gguf"
    broken.write_bytes(b"GGUF\x03\0\0\0" + b"\xff" * 64)  # a GGUF v3 head, then garbage
    store = start_store(worker)
    ask(store, A)
    r = ask(store, "broken.gguf")
    assert r.status_code == 422
    assert r.headers["x-should-retry"] == "false"
    message = r.json()["error"]["message"]
    assert "cannot load model broken.gguf" in message
    assert "llama.cpp could not load broken.gguf" in message  # llama.cpp's own reason
    # The worker does not keep the file: it holds no slot of the disk tier.
    assert "broken.gguf" not in [c["name"] for c in worker_status(worker)["cached"]]
    assert_agree(store, worker)
    uploads = worker_status(worker)["received"]["uploads"]
    again = ask(store, "broken.gguf")  # remembered: refused at once, nothing pushed
    assert again.status_code == 422 and again.json()["error"]["type"] == "model_unloadable"
    assert worker_status(worker)["received"]["uploads"] == uploads
    step(store, worker, A, "load_from_local_store")
    # A new version of the file (a good model under that name) is tried again.
    shutil.copyfile(models_dir / B, models_dir / ".new.tmp")
    (models_dir / ".new.tmp").replace(broken)
    assert ask(store, "broken.gguf").status_code == 200


def test_truncated_chunked_upload_is_400_and_leaves_nothing(worker):
    parts = urlsplit(worker.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(
            f"POST /cache_model HTTP/1.1\r\nHost: localhost\r\nX-Model-Name: {A}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n1000\r\nGGUF".encode()
        )
        sock.shutdown(socket.SHUT_WR)
        reply = sock.recv(65536).decode(errors="replace")
    assert reply.startswith("HTTP/1.1 400"), reply
    assert worker_status(worker)["cached"] == []


def test_store_killed_mid_push_leaves_nothing_on_the_worker(
    worker, processes, models_dir, tmp_path
):
    write_tiny_model(models_dir / BIG, size_mb=200)
    cache = Path(worker_status(worker)["model_cache_dir"])
    store = ServiceProcess(
        "model_store_server.cli",
        {
            "STORE_HOST": "127.0.0.1",
            "WORKER_URL": worker.url,
            "MODELS_DIR": str(models_dir),
            "TRANSPORT": "http",  # a push through the socket (auto would place a link)
        },
        "STORE_PORT",
        tmp_path / "store.log",
    )
    processes.append(store)
    store.start()
    thread = threading.Thread(target=lambda: _ignore_errors(lambda: ask(store, BIG)))
    thread.start()
    assert wait_for(lambda: temp_files(cache)), "the push never started"
    store.kill()
    thread.join(30)
    assert wait_for(lambda: not temp_files(cache), timeout=10)
    assert not (cache / BIG).exists()
    assert worker_status(worker)["cached"] == []
    assert requests.get(f"{worker.url}/healthz", timeout=5).ok


def _ignore_errors(call):
    with contextlib.suppress(requests.RequestException):
        call()


def test_worker_refuses_a_body_that_is_not_gguf(worker):
    r = requests.post(
        f"{worker.url}/cache_model",
        data=b"#!/bin/sh\nrm -rf /\n" * 100,
        headers={"X-Model-Name": A},
        timeout=10,
    )
    assert r.status_code == 400
    assert "not a GGUF file" in r.json()["error"]["message"]
    cache = Path(worker_status(worker)["model_cache_dir"])
    assert list(cache.iterdir()) == []


def test_worker_refuses_a_wrong_digest(worker, models_dir):
    r = requests.post(
        f"{worker.url}/cache_model",
        data=(models_dir / A).read_bytes(),
        headers={"X-Model-Name": A, "X-Model-Sha256": "0" * 64},
        timeout=10,
    )
    assert r.status_code == 400
    assert "sha256" in r.json()["error"]["message"]
    assert worker_status(worker)["cached"] == []


def test_truncated_upload_leaves_nothing(worker, models_dir):
    """A client that announces more bytes than it sends, then hangs up."""
    data = (models_dir / A).read_bytes()
    parts = urlsplit(worker.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        head = (
            f"POST /load_model_from_store HTTP/1.1\r\nHost: localhost\r\nX-Model-Name: {A}\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        ).encode()
        sock.sendall(head + data[: len(data) // 2])
        sock.shutdown(socket.SHUT_WR)
        sock.recv(65536)
    status = worker_status(worker)
    assert status["cached"] == [] and status["loaded"] is None
    assert list(cache_dir(worker).iterdir()) == []


def test_size_mismatch_is_refused(worker, models_dir):
    r = requests.post(
        f"{worker.url}/cache_model",
        data=(models_dir / A).read_bytes(),
        headers={"X-Model-Name": A, "X-Model-Size": "10"},
        timeout=10,
    )
    assert r.status_code == 400
    assert list(cache_dir(worker).iterdir()) == []


def test_unloadable_file_reports_llama_cpp_failure(worker, tmp_path):
    r = requests.post(
        f"{worker.url}/load_model_from_store",
        data=b"GGUF" + b"\0" * 100,
        headers={"X-Model-Name": "broken.gguf"},
        timeout=30,
    )
    assert r.status_code == 422
    assert "llama.cpp could not load broken.gguf" in r.json()["error"]["message"]
    assert worker_status(worker)["loaded"] is None


def test_start_removes_leftover_temp_files_and_non_gguf_files(start_worker, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / ".upload-abc.part").write_bytes(b"GGUF half")
    (cache / A).write_bytes(b"GGUF kept")
    (cache / B).write_bytes(b"<html>not a model</html>")
    w = start_worker(model_cache_dir=cache)
    assert sorted(p.name for p in cache.iterdir()) == [A]
    assert [c["name"] for c in worker_status(w)["cached"]] == [A]


@pytest.mark.parametrize(
    ("headers", "complaint"),
    [
        ({"X-Model-Digest": "blake3:" + "0" * 64}, "has digest blake3:"),
        ({"X-Model-Digest": "sha256:" + "0" * 64}, "has digest sha256:"),
        ({"X-Model-Digest": "md5:" + "0" * 64}, "unknown digest algorithm 'md5'"),
        ({"X-Model-Digest": "blake3:abc"}, "must be 64 hexadecimal characters"),
        (
            {"X-Model-Digest": "blake3:" + "0" * 64, "X-Model-Sha256": "0" * 64},
            "not both",
        ),
    ],
)
def test_worker_refuses_a_wrong_or_malformed_x_model_digest(worker, models_dir, headers, complaint):
    r = requests.post(
        f"{worker.url}/cache_model",
        data=(models_dir / A).read_bytes(),
        headers={"X-Model-Name": A, **headers},
        timeout=10,
    )
    assert r.status_code == 400
    assert complaint in r.json()["error"]["message"]
    assert worker_status(worker)["cached"] == []
    assert files_on_disk(worker) == []


@pytest.mark.parametrize("algorithm", ["blake3", "sha256"])
def test_worker_keeps_a_sized_upload_whose_digest_matches(worker, models_dir, algorithm):
    path = models_dir / A
    r = requests.post(
        f"{worker.url}/cache_model",
        data=path.read_bytes(),
        headers={"X-Model-Name": A, "X-Model-Digest": file_digest(path, algorithm)},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    assert r.json()["bytes"] == path.stat().st_size
    assert file_sha256(Path(worker_status(worker)["model_cache_dir"]) / A) == file_sha256(path)


def test_worker_reports_the_digest_each_file_was_verified_against(worker, start_store, models_dir):
    """The digest travels with the file (an extended attribute): reported after a restart
    too, and gone when the file is replaced by something it never verified."""
    from inference_worker.model_cache import ModelCache
    from model_swap.digest import file_digest

    store = start_store(worker)
    assert ask(store, A).status_code == 200
    cached = {entry["name"]: entry for entry in worker_status(worker)["cached"]}
    assert cached[A]["digest"] == file_digest(models_dir / A)
    directory = cache_dir(worker)
    assert ModelCache(directory).digest(A) == cached[A]["digest"]  # a restarted worker's view
    shutil.copy(models_dir / B, directory / A)  # replaced behind the worker's back
    assert ModelCache(directory).digest(A) is None
