"""inference_worker/pipeline.py: hashing and writing on their own threads, buffers reused only
after both are done with them, errors surfacing in the reader's thread."""

from __future__ import annotations

import hashlib
import os
import threading
import time

import pytest

from inference_worker.pipeline import BufferPipeline


def _blocks(count: int, size: int) -> list[bytes]:
    return [os.urandom(size) for _ in range(count)]


def _run(blocks, write, digest, buffers=2):
    with BufferPipeline(write, digest, buffers, max(map(len, blocks))) as pipeline:
        for data in blocks:
            buffer = pipeline.take()
            buffer[: len(data)] = data
            pipeline.submit(buffer, len(data))


def test_every_block_is_hashed_and_written_in_order_while_the_other_stage_lags():
    blocks = _blocks(12, 4096)
    written: list[bytes] = []
    hashed = hashlib.sha256()

    def slow_write(block):  # the writer lags: a buffer must not be refilled before it writes
        time.sleep(0.002)
        written.append(bytes(block))

    def slow_hash(block):
        time.sleep(0.001)
        hashed.update(block)

    _run(blocks, slow_write, slow_hash)
    assert written == blocks
    assert hashed.digest() == hashlib.sha256(b"".join(blocks)).digest()


def test_hashing_and_writing_run_on_different_threads_at_once():
    both = threading.Barrier(2, timeout=5)  # each stage waits for the other to be running
    threads: set[str] = set()

    def stage(block):
        threads.add(threading.current_thread().name)
        both.wait()

    _run(_blocks(3, 64), stage, stage)
    assert threads == {"upload-write", "upload-hash"}


@pytest.mark.parametrize("failing", ["write", "digest"])
def test_a_failing_stage_raises_in_the_readers_thread(failing):
    def boom(block):
        raise OSError("disk on fire")

    stages = {"write": lambda b: None, "digest": lambda b: None, failing: boom}
    with pytest.raises(OSError, match="disk on fire"):
        _run(_blocks(8, 64), stages["write"], stages["digest"])


def test_without_a_digest_only_the_writer_runs():
    blocks = _blocks(5, 100)
    written: list[bytes] = []
    _run(blocks, lambda b: written.append(bytes(b)), None)
    assert written == blocks
