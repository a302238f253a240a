"""TRANSPORT=auto: a store on the worker's filesystem places model files itself (reflink or
kernel copy, never a hard link).

Real store and worker, real tiny models; the "other machine" case runs the
worker in its own mount namespace, where its cache directory is a different
filesystem from the one the store sees under the same path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from model_store_server.transport.link import place_file
from model_swap.digest import file_digest
from model_swap.probes import free_port, wait_until_healthy
from tests.conftest import A, B, C, ask, start_generation


def worker_status(worker) -> dict:
    return requests.get(f"{worker.url}/status", timeout=10).json()


def pushed_bytes(store, transport: str) -> float:
    text = requests.get(f"{store.url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(f'model_swap_pushed_bytes_total{{transport="{transport}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_auto_places_files_on_one_box_with_the_seed_actions(worker, start_store, models_dir):
    store = start_store(worker, transport="auto")
    first = ask(store, A)
    assert first.status_code == 200
    assert first.headers["X-Cache-Action"] == "load_from_store"
    assert first.headers["X-Transport"] == "link"
    cache = worker.app.extensions["model_cache"].directory
    # The worker's own inode (a clone or a kernel copy), and not a byte through a socket.
    assert os.stat(cache / A).st_ino != os.stat(models_dir / A).st_ino
    assert os.stat(cache / A).st_nlink == 1
    assert (cache / A).read_bytes() == (models_dir / A).read_bytes()
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
    # Evicting the worker's copy leaves the store's file alone.
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
    assert (cache / A).read_bytes() == (models_dir / B).read_bytes()


def test_the_worker_verifies_a_placed_file(worker, models_dir):
    cache = worker.app.extensions["model_cache"].directory
    placed = f".link-{uuid.uuid4().hex}.part"
    place_file(models_dir / A, cache / placed)
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


def test_the_worker_refuses_a_hard_link(worker, models_dir):
    """A link would share the operator's inode: ``cp`` over it rewrites the worker's model."""
    cache = worker.app.extensions["model_cache"].directory
    placed = f".link-{uuid.uuid4().hex}.part"
    os.link(models_dir / A, cache / placed)
    r = requests.post(
        f"{worker.url}/adopt_model",
        headers={
            "X-Model-Name": A,
            "X-Placed-Name": placed,
            "X-Model-Size": str((models_dir / A).stat().st_size),
            "X-Model-Digest": file_digest(models_dir / A),
        },
        timeout=10,
    )
    assert r.status_code == 400
    assert "hard link" in r.json()["error"]["message"]
    assert not (cache / placed).exists() and not (cache / A).exists()
    assert (models_dir / A).is_file()


def test_place_file_makes_a_new_inode(tmp_path):
    source = tmp_path / "m.gguf"
    source.write_bytes(b"GGUF" + os.urandom(300_000))
    target = tmp_path / "placed"
    assert place_file(source, target) in ("reflink", "copy_file_range")
    assert os.stat(target).st_ino != os.stat(source).st_ino
    assert target.read_bytes() == source.read_bytes()
    with open(source, "r+b") as f:  # an in-place edit of the source never reaches the copy
        f.write(b"GGUFxxxx")
    assert target.read_bytes()[4:8] != b"xxxx"


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


def rewrite_in_place(path: Path, data: bytes, truncate: bool) -> None:
    """``cp new old`` over an existing ``old`` (truncate, then write), or an editor's in-place
    write: the same inode, new bytes."""
    with open(path, "r+b") as f:
        if truncate:
            f.truncate(0)
            f.flush()
            os.fsync(f.fileno())
            time.sleep(0.3)  # a model memory-mapped from this inode now faults past its end
        f.write(data)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["cp", "edit"])
def test_a_model_rewritten_in_place_never_reaches_the_worker(
    worker_process, start_store, models_dir, tmp_path, how
):
    """``cp`` over a model in MODELS_DIR, or an in-place edit keeping its size, while a stream
    on it runs: the worker's copy keeps its bytes, the stream finishes or ends with a clean
    error, the worker keeps running and the next request serves the new version."""
    cache = tmp_path / "cache"
    worker = worker_process(cache_dir=cache)
    store = start_store(worker, transport="auto")
    assert ask(store, A).headers["X-Transport"] == "link"
    old = (models_dir / A).read_bytes()
    new = (models_dir / C).read_bytes()  # the same size: only the modification time differs
    assert len(new) == len(old)
    response, first, chunks = start_generation(store, A)
    rewrite_in_place(models_dir / A, new, truncate=how == "cp")
    assert (cache / A).read_bytes() == old  # what the worker loaded is not the operator's file
    rest = b"".join(chunks)
    response.close()
    assert first + rest
    assert worker.process.poll() is None, f"the worker died: {worker.process.returncode}"
    r = ask(store, A)
    assert r.status_code == 200, r.text
    assert r.headers["X-Cache-Action"] == "load_from_store"
    assert worker_status(worker)["loaded"] == A
    cached = {f["name"]: f for f in worker_status(worker)["cached"]}
    assert cached[A]["digest"] == file_digest(models_dir / A)
    assert (cache / A).read_bytes() == new
