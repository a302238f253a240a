"""The KV cache's memory faulted in while llama.cpp parses the file (inference_worker/
prefault.py): where it is used, what it maps and gives back, and that a load uses it with
the size of the context's KV cache."""

from __future__ import annotations

import logging

from inference_worker import prefault
from inference_worker.engine import Engine
from inference_worker.prefault import CHUNK, Prefault
from model_swap import footprint
from model_swap.tiny_models import write_tiny_model


def test_wanted_only_where_the_kv_cache_is_in_host_memory_on_linux():
    assert prefault.wanted(gpu_offload=False, n_gpu_layers=-1, platform="linux")
    assert prefault.wanted(gpu_offload=True, n_gpu_layers=0, platform="linux")  # CPU layers
    assert not prefault.wanted(gpu_offload=True, n_gpu_layers=-1, platform="linux")
    assert not prefault.wanted(gpu_offload=True, n_gpu_layers=12, platform="linux")
    assert not prefault.wanted(gpu_offload=False, n_gpu_layers=-1, platform="darwin")


def test_a_region_is_written_whole_then_given_back():
    size = 2 * CHUNK + 4096  # two whole chunks and a partial one
    region = Prefault(lambda: size)
    region._thread.join()  # let it finish before release stops it
    assert (region.size, region.touched) == (size, size)
    region.release()
    assert region._address is None
    region.release()  # twice: nothing left to give back


def test_release_stops_the_writing_at_a_chunk_boundary():
    started = []

    def size_of() -> int:
        started.append(True)
        return 64 * CHUNK

    region = Prefault(size_of)
    region.release()  # at once: the thread stops after at most one chunk
    assert started and region.size == 64 * CHUNK
    assert region.touched % CHUNK == 0 and region.touched < region.size
    assert region._address is None


def test_nothing_to_map_and_a_failure_leave_the_load_alone(caplog):
    empty = Prefault(lambda: 0)
    empty.release()
    assert (empty.size, empty.touched) == (0, 0)

    def broken() -> int:
        raise OSError("no header")

    with caplog.at_level(logging.ERROR, logger="inference_worker.prefault"):
        failed = Prefault(broken)
        failed.release()
    assert failed.touched == 0 and "KV prefault failed" in caplog.text


def test_a_load_faults_in_its_context_kv_cache_first(tmp_path):
    path = write_tiny_model(tmp_path / "tiny-prefault.gguf")
    engine = Engine(n_ctx=256, parallel=2)
    loader = engine._loader
    assert loader.prefault  # this machine: a CPU build on Linux
    try:
        engine.load("tiny-prefault.gguf", path)
        kv = footprint.estimate(path, 256, n_seq=loader.kv_streams).kv_bytes
        region = loader.last_prefault
        assert kv > 0 and region.size == kv  # mapped whole; written as far as time allowed
        assert region.touched in (kv, *range(0, kv, CHUNK)) and region._address is None
    finally:
        engine.unload("tiny-prefault.gguf")
