"""The store's file version key: a file rewritten in place with the same size (same path,
same inode) is a new version with a new digest; an untouched file is hashed once.
The other tests always rename a new file into place, which changes the inode."""

from __future__ import annotations

import os
import threading
import time

from model_store_server.digests import DigestCache, PerVersionCache
from model_swap.digest import file_digest


def rewrite_in_place(path, data: bytes, mtime_step_ns: int = 1_000_000) -> None:
    """``cp new path`` over an existing file: same inode, same size, a later mtime."""
    before = os.stat(path)
    with open(path, "r+b") as f:
        f.write(data)
    # Two writes within one clock tick can share an mtime; a real cp comes later.
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + mtime_step_ns))


def test_an_in_place_rewrite_of_the_same_size_is_a_new_digest(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"A" * 4096)
    cache = DigestCache()
    first = cache.digest(path)
    assert first == file_digest(path)
    inode = os.stat(path).st_ino
    rewrite_in_place(path, b"B" * 4096)
    assert os.stat(path).st_ino == inode and os.stat(path).st_size == 4096
    second = cache.digest(path)
    assert second == file_digest(path) != first
    assert cache.sha256(path) == file_digest(path, "sha256").partition(":")[2]


def test_an_untouched_file_is_computed_once_per_key(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"x" * 100)
    cache = PerVersionCache()
    calls = []

    def compute():
        calls.append(1)
        return len(calls)

    assert cache.get(path, "k", compute) == 1
    assert cache.get(path, "k", compute) == 1
    rewrite_in_place(path, b"y" * 100)
    assert cache.get(path, "k", compute) == 2
    assert cache.get(path, "k", compute) == 2
    assert cache.get(path, "other", compute) == 3  # another key is another value
    assert cache.get(path, "k", compute) == 2  # ... and keeps this version's others


def test_a_size_change_alone_is_a_new_version(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"x" * 100)
    cache = DigestCache()
    first = cache.digest(path)
    stat = os.stat(path)
    with open(path, "ab") as f:
        f.write(b"x")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime, one byte more
    assert cache.digest(path) == file_digest(path) != first


def test_concurrent_requests_for_one_version_compute_it_once(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"x" * 100)
    cache = PerVersionCache()
    calls = []
    start = threading.Barrier(4)

    def compute():
        calls.append(1)
        time.sleep(0.2)  # still computing when the others ask
        return "value"

    results = []

    def ask():
        start.wait()
        results.append(cache.get(path, "k", compute))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert results == ["value"] * 4 and len(calls) == 1


def test_each_path_has_its_own_versions(tmp_path):
    one, two = tmp_path / "one.gguf", tmp_path / "two.gguf"
    one.write_bytes(b"1" * 10)
    two.write_bytes(b"2" * 10)
    cache = DigestCache()
    assert cache.digest(one) == file_digest(one) != cache.digest(two) == file_digest(two)
    assert cache.digest(one, "sha256") == file_digest(one, "sha256")
    assert cache.digest(one) == file_digest(one)  # another algorithm kept the first


def test_several_files_keep_their_values_side_by_side(tmp_path):
    paths = [tmp_path / f"m{i}.gguf" for i in range(3)]
    for i, path in enumerate(paths):
        path.write_bytes(bytes([i]) * 64)
    cache = PerVersionCache()
    calls = []

    def compute_for(path):
        def compute():
            calls.append(path.name)
            return path.name

        return compute

    for _ in range(2):
        assert [cache.get(p, "k", compute_for(p)) for p in paths] == [p.name for p in paths]
    assert calls == [p.name for p in paths]  # each once, none forgotten for another


def test_computing_one_file_does_not_hold_up_another(tmp_path):
    slow, fast = tmp_path / "slow.gguf", tmp_path / "fast.gguf"
    slow.write_bytes(b"s" * 10)
    fast.write_bytes(b"f" * 10)
    cache = PerVersionCache()
    fast_done = threading.Event()

    def compute_slow():
        # Done only once the other file's value came in meanwhile.
        return fast_done.wait(5)

    thread = threading.Thread(target=lambda: results.append(cache.get(slow, "k", compute_slow)))
    results: list[bool] = []
    thread.start()
    time.sleep(0.1)  # the slow computation is under way
    assert cache.get(fast, "k", lambda: "fast") == "fast"
    fast_done.set()
    thread.join(5)
    assert results == [True]
