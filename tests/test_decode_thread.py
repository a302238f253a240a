"""Multi-threaded decodes of every resident model run on one thread (one OpenMP pool);
one-thread decodes stay on each model's batch loop (inference_worker/decode_thread.py)."""

from __future__ import annotations

import threading

import llama_cpp
import pytest

from model_swap.generation import Sampling
from tests.conftest import A, B, C

GREEDY = Sampling(temperature=0.0)


@pytest.fixture
def decoding_threads(monkeypatch):
    """The name of the thread each llama_decode ran on (the real call, only watched)."""
    seen: list[str] = []
    real = llama_cpp.llama_decode

    def watched(ctx, batch):
        seen.append(threading.current_thread().name)
        return real(ctx, batch)

    monkeypatch.setattr(llama_cpp, "llama_decode", watched)
    return seen


def _texts(models_dir, n_threads: int) -> dict[str, str]:
    from inference_worker.engine import Engine
    from inference_worker.generation import Job

    engine = Engine(n_ctx=256, parallel=2, n_threads=n_threads)
    texts = {}
    try:
        for name in (A, B, C):
            engine.load(name, models_dir / name)
        for name in (A, B, C, A, B, C):
            generation = engine.begin(
                name, Job(prompt="hello world", max_tokens=6, sampling=GREEDY)
            )
            try:
                texts.setdefault(name, "".join(generation.tokens()))
            finally:
                generation.close()
    finally:
        for name in (A, B, C):
            engine.unload(name)
    return texts


def test_two_thread_decodes_of_three_resident_models_run_on_one_thread(
    models_dir, decoding_threads
):
    """Each batch loop starting its own OpenMP regions would give libgomp a pool per
    resident model, and more pooled threads than CPUs make every barrier of every model
    stop spinning: so all of them run on the one wide-decode thread, with the same texts."""
    texts = _texts(models_dir, n_threads=2)
    assert len(decoding_threads) >= 6
    assert len(set(decoding_threads)) == 1
    assert decoding_threads[0].startswith("wide-decode")
    decoding_threads.clear()
    assert _texts(models_dir, n_threads=1) == texts


def test_one_thread_decodes_stay_on_each_models_loop(models_dir, decoding_threads):
    """A one-thread step starts no OpenMP region: models still decode side by side."""
    _texts(models_dir, n_threads=1)
    assert {name.split("-", 1)[1] for name in decoding_threads} == {A, B, C}
    assert all(name.startswith("batch-") for name in decoding_threads)
