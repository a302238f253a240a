"""TRANSPORT=auto: a store on the worker's filesystem places model files by hard link.

Real store and worker, real tiny models; the "other machine" case runs the
worker in its own mount namespace, where its cache directory is a different
filesystem from the one the store sees under the same path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests

from model_store_server.transport_link import place_file
from model_swap.digest import file_digest
from model_swap.probes import free_port, wait_until_healthy
from tests.conftest import A, B, C, ask


def worker_status(worker) -> dict:
    return requests.get(f"{worker.url}/status", timeout=10).json()


def pushed_bytes(store, transport: str) -> float:
    text = requests.get(f"{store.url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(f'model_swap_pushed_bytes_total{{transport="{transport}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_auto_places_files_by_link_with_the_seed_actions(worker, start_store, models_dir):
    store = start_store(worker, transport="auto")
    first = ask(store, A)
    assert first.status_code == 200
    assert first.headers["X-Cache-Action"] == "load_from_store"
    assert first.headers["X-Transport"] == "link"
    cache = worker.app.extensions["model_cache"].directory
    # One inode: the file is on disk once, and not a byte went through a socket.
    assert os.stat(cache / A).st_ino == os.stat(models_dir / A).st_ino
    assert worker_status(worker)["received"]["bytes"] == 0
    assert pushed_bytes(store, "link") == (models_dir / A).stat().st_size
    assert pushed_bytes(store, "http") == 0
    # The worker verified it as an upload: its digest is recorded.
    cached = {f["name"]: f for f in worker_status(worker)["cached"]}
    assert cached[A]["digest"] == file_digest(models_dir / A)
    assert ask(store, A).headers["X-Cache-Action"] == "already_loaded"
    # The seed's LRU sequence, unchanged (MAX_CACHE_SIZE 2).
    assert ask(store, B).headers["X-Cache-Action"] == "load_from_store"
    third = ask(store, C)
    assert third.headers["X-Cache-Action"] == "load_from_store"
    assert third.headers["X-Evicted"] == A
    # Evicting the worker's link leaves the store's file alone.
    assert (models_dir / A).is_file()
    assert not (cache / A).exists()
    # No placed or probe file is left behind.
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]


def test_a_replaced_file_is_placed_again_as_a_new_version(worker, start_store, models_dir):
    store = start_store(worker, transport="auto")
    assert ask(store, A).headers["X-Cache-Action"] == "load_from_store"
    # Replace (new inode) the store's file with another model's bytes.
    replacement = models_dir / f".{uuid.uuid4().hex}.tmp"
    shutil.copyfile(models_dir / B, replacement)
    os.replace(replacement, models_dir / A)
    again = ask(store, A)
    assert again.headers["X-Cache-Action"] == "load_from_store"
    cache = worker.app.extensions["model_cache"].directory
    assert os.stat(cache / A).st_ino == os.stat(models_dir / A).st_ino


def test_the_worker_verifies_a_placed_file(worker, models_dir):
    cache = worker.app.extensions["model_cache"].directory
    placed = f".link-{uuid.uuid4().hex}.part"
    os.link(models_dir / A, cache / placed)
    size = (models_dir / A).stat().st_size
    wrong = file_digest(models_dir / B)
    r = requests.post(
        f"{worker.url}/adopt_model",
        headers={
            "X-Model-Name": A,
            "X-Placed-Name": placed,
            "X-Model-Size": str(size),
            "X-Model-Digest": wrong,
        },
        timeout=10,
    )
    assert r.status_code == 400
    assert "digest" in r.json()["error"]["message"]
    assert not (cache / placed).exists() and not (cache / A).exists()
    assert (models_dir / A).is_file()


@pytest.mark.parametrize("placed", ["tiny-a.gguf", "../x.part", ".link-xyz.part", ""])
def test_the_worker_adopts_only_placed_names(worker, placed):
    r = requests.post(
        f"{worker.url}/adopt_model",
        headers={"X-Model-Name": A, "X-Placed-Name": placed, "X-Model-Size": "10"},
        timeout=10,
    )
    assert r.status_code == 400


def test_place_file_across_filesystems_never_links(tmp_path):
    """/dev/shm is another filesystem: no hard link; a kernel copy or a clean refusal."""
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm on this machine")
    source = tmp_path / "m.gguf"
    source.write_bytes(b"GGUF" + os.urandom(100_000))
    target = Path(f"/dev/shm/.link-{uuid.uuid4().hex}.part")
    try:
        how = place_file(source, target)
        assert how in ("reflink", "copy_file_range")
        with open(target, "rb") as f:
            assert f.read() == source.read_bytes()
    except OSError:
        assert not target.exists()
    finally:
        target.unlink(missing_ok=True)


@pytest.mark.slow
def test_a_worker_on_another_filesystem_gets_http_pushes(start_store, tmp_path):
    """The worker's cache path exists for the store too, but the worker sees a tmpfs there."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs unshare(1) as root to give the worker its own mount namespace")
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare -m is not permitted here")
    cache = tmp_path / "worker-cache"
    cache.mkdir()
    port = free_port()
    script = f'mount -t tmpfs none "{cache}" && exec "{sys.executable}" -m inference_worker.cli'
    env = {
        **os.environ,
        "WORKER_HOST": "127.0.0.1",
        "WORKER_PORT": str(port),
        "MODEL_CACHE_DIR": str(cache),
    }
    worker = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(url, timeout=60)

        class Remote:
            pass

        remote = Remote()
        remote.url = url
        store = start_store(remote, transport="auto")
        r = ask(store, A)
        assert r.status_code == 200
        assert r.headers["X-Cache-Action"] == "load_from_store"
        assert r.headers["X-Transport"] == "http"
        assert requests.get(f"{url}/status", timeout=10).json()["received"]["bytes"] > 0
        assert list(cache.iterdir()) == []  # nothing was placed in the store's view
    finally:
        worker.terminate()
        worker.wait(timeout=30)
