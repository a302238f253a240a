"""Continuous batching in the worker: concurrent generations on one model share decode steps,
and each still gets the text it gets alone. Real worker servers and real tiny models."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import llama_cpp
import pytest
import requests

from inference_worker.config import WorkerSettings
from model_swap.settings import SettingsError
from tests.conftest import A, B, store_status, wait_for, worker_status

N_CTX = 512


def load(worker, models_dir, name=A) -> None:
    r = requests.post(
        f"{worker.url}/load_model_from_store",
        data=(models_dir / name).read_bytes(),
        headers={"X-Model-Name": name},
        timeout=60,
    )
    assert r.status_code == 200, r.text


def job(i: int, **extra) -> dict:
    """Distinct requests: their own prompt and seed, greedy for every third."""
    body = {"prompt": f"request {i}: hello world", "max_tokens": 96, "seed": 100 + i}
    body["temperature"] = 0.0 if i % 3 == 0 else 0.8
    return {**body, **extra}


def infer(worker, body: dict) -> str:
    r = requests.post(f"{worker.url}/infer", json={"model": A, **body}, timeout=120)
    assert r.status_code == 200, r.text
    return r.text


def open_stream(worker, body: dict) -> tuple[requests.Response, object]:
    """A streamed /infer once its first piece has arrived (its sequence is running)."""
    r = requests.post(f"{worker.url}/infer", json={"model": A, **body}, stream=True, timeout=120)
    assert r.status_code == 200, r.text
    chunks = r.iter_content(chunk_size=None)
    return r, chunks


def batch_histogram(worker) -> dict[str, float]:
    text = requests.get(f"{worker.url}/metrics", timeout=10).text
    found = {}
    for line in text.splitlines():
        if line.startswith(
            (
                "model_swap_worker_batch_",
                "model_swap_worker_sequences_running",
                "model_swap_worker_decode_steps_total",
            )
        ):
            key, value = line.rsplit(" ", 1)
            found[key] = float(value)
    return found


def test_eight_concurrent_requests_overlap_and_each_gets_its_text_alone(start_worker, models_dir):
    worker = start_worker(n_ctx=N_CTX, parallel=8)
    load(worker, models_dir)
    alone = [infer(worker, job(i)) for i in range(8)]
    calls_alone = batch_histogram(worker)["model_swap_worker_batch_tokens_count"]
    barrier = threading.Barrier(8)
    spans: list[tuple[float, float]] = [(0.0, 0.0)] * 8
    texts = [""] * 8

    def one(i: int) -> None:
        barrier.wait()
        r, chunks = open_stream(worker, job(i))
        pieces = [next(chunks).decode()]
        first = time.monotonic()
        pieces += [c.decode() for c in chunks]
        spans[i] = (first, time.monotonic())
        texts[i] = "".join(pieces)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(8)))
    assert texts == alone
    # Every stream had its first piece before any stream ended: they ran together.
    assert max(first for first, _ in spans) < min(last for _, last in spans)
    metrics = batch_histogram(worker)
    calls = metrics["model_swap_worker_batch_tokens_count"] - calls_alone
    assert calls < calls_alone / 2  # shared decode steps: far fewer than one per token each
    assert metrics['model_swap_worker_batch_tokens_bucket{le="4.0"}'] < calls_alone + calls
    status = worker_status(worker)
    assert status["parallel"] == 8 and status["sequences_running"] == 0
    assert status["resident"][0]["kv_tokens"] == 0  # no running sequence holds cells


def test_same_text_as_bare_llama_cpp_python_with_parallel_one(start_worker, models_dir):
    """PARALLEL=1 (and any other) samples exactly as llama-cpp-python's Llama.generate did."""
    worker = start_worker(n_ctx=N_CTX, parallel=1)
    load(worker, models_dir)
    llm = llama_cpp.Llama(str(models_dir / A), n_ctx=N_CTX, verbose=False)
    try:
        for i in (0, 1, 4):
            body = job(i, max_tokens=32, presence_penalty=0.5 if i == 4 else 0.0)
            llm.set_seed(body["seed"])
            tokens = llm.tokenize(body["prompt"].encode(), add_bos=True, special=False)
            out = []
            for token in llm.generate(
                tokens,
                temp=body["temperature"],
                presence_penalty=body["presence_penalty"],
                reset=True,
            ):
                if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token) or len(out) == 32:
                    break
                out.append(token)
            expected = llm.detokenize(out).decode("utf-8", errors="replace")
            assert infer(worker, body) == expected
    finally:
        llm.close()


def test_parallel_one_serves_one_at_a_time_first_come_first_served(start_worker, models_dir):
    worker = start_worker(n_ctx=N_CTX, parallel=1)
    load(worker, models_dir)
    held, chunks = open_stream(worker, job(1, max_tokens=None))
    try:
        next(chunks)
        results = {}

        def queued():
            results["text"] = infer(worker, job(2))

        thread = threading.Thread(target=queued)
        thread.start()
        assert wait_for(lambda: worker_status(worker)["queue_depth"] == 1)
        status = worker_status(worker)
        assert status["sequences_running"] == 1 and status["resident"][0]["queued"] == 1
        assert "text" not in results
    finally:
        held.close()
    thread.join(60)
    assert results["text"] == infer(worker, job(2))


def test_requests_beyond_parallel_are_served_in_arrival_order(start_worker, models_dir):
    worker = start_worker(n_ctx=N_CTX, parallel=1)
    load(worker, models_dir)
    held, chunks = open_stream(worker, job(1, max_tokens=None))
    order: list[int] = []
    threads = []
    try:
        next(chunks)
        for i in range(4):
            thread = threading.Thread(target=lambda i=i: (infer(worker, job(i)), order.append(i)))
            thread.start()
            threads.append(thread)
            assert wait_for(lambda i=i: worker_status(worker)["queue_depth"] == i + 1)
    finally:
        held.close()
    for thread in threads:
        thread.join(60)
    assert order == [0, 1, 2, 3]


def test_cancelled_stream_frees_its_sequence_and_its_kv_cells(start_worker, models_dir):
    worker = start_worker(n_ctx=N_CTX, parallel=2)
    load(worker, models_dir)
    expected = infer(worker, job(3))
    first, first_chunks = open_stream(worker, job(1, max_tokens=None))
    second, second_chunks = open_stream(worker, job(2, max_tokens=None))
    try:
        next(first_chunks), next(second_chunks)
        assert worker_status(worker)["sequences_running"] == 2
        second.close()  # the client leaves mid-batch
        assert wait_for(lambda: worker_status(worker)["sequences_running"] == 1, 30)
        # Its sequence is free (a third request is not queued) and starts from empty KV cells.
        assert infer(worker, job(3)) == expected
        assert next(first_chunks)  # the other stream went on
    finally:
        first.close()
    assert wait_for(lambda: worker_status(worker)["resident"][0]["kv_tokens"] == 0, 30)
    assert worker_status(worker)["sequences_running"] == 0


def test_long_prompt_enters_in_chunks_between_the_others_decode_steps(start_worker, models_dir):
    # No prompt cache: the second send must evaluate the prompt again, not restore it.
    worker = start_worker(n_ctx=2048, parallel=2, kv_cache_bytes=0)
    load(worker, models_dir)
    long_prompt = job(5, prompt=" ".join(f"word{i}" for i in range(130)), max_tokens=8)
    r = requests.post(
        f"{worker.url}/infer",
        json={"model": A, **long_prompt, "stream_format": "events"},
        timeout=60,
    )
    prompt_tokens = json.loads(r.text.splitlines()[-1])["usage"]["prompt_tokens"]
    assert prompt_tokens > 2 * 512  # three chunks of at most n_batch tokens
    expected = infer(worker, long_prompt)
    running, chunks = open_stream(worker, job(1, max_tokens=None))
    try:
        next(chunks)
        before = batch_histogram(worker)
        assert infer(worker, long_prompt) == expected
        after = batch_histogram(worker)
        assert next(chunks)  # the running stream goes on
    finally:
        running.close()
    # No step took more than n_batch tokens, and each chunk of the prompt went in beside
    # the running stream's next token.
    inf, top = (f'model_swap_worker_batch_tokens_bucket{{le="{le}"}}' for le in ("+Inf", "512.0"))
    assert after[inf] == after[top]
    mixed = "model_swap_worker_batch_mixed_steps_total"
    assert after[mixed] - before[mixed] >= 3


def test_decode_steps_are_counted_by_the_threads_they_ran_on(start_worker, models_dir):
    """``N_THREADS`` fixes every step's threads: each llama_decode call is counted under
    that count, and the counts add up to the batch size histogram's calls."""
    worker = start_worker(n_ctx=N_CTX, parallel=2, n_threads=2)
    load(worker, models_dir)
    infer(worker, job(1, max_tokens=6))
    found = batch_histogram(worker)
    calls = found["model_swap_worker_batch_tokens_count"]
    assert calls >= 6  # the prompt, then one step per token after the first
    assert found['model_swap_worker_decode_steps_total{threads="2"}'] == calls
    assert not any(key.endswith('{threads="1"}') for key in found)


def test_parallel_setting_is_validated():
    assert WorkerSettings.from_env({}).parallel == 4
    assert WorkerSettings.from_env({"PARALLEL": "1"}).parallel == 1
    for bad in ("0", "x", "1000"):
        with pytest.raises(SettingsError, match="PARALLEL"):
            WorkerSettings.from_env({"PARALLEL": bad})


def test_store_runs_eight_generations_on_one_model_together_and_a_swap_waits_for_all(
    start_worker, start_store
):
    """Through the store: eight leases on one model at once; another model (one slot)
    is loaded only after every one of them ended."""
    worker = start_worker(n_ctx=4096, parallel=8)
    store = start_store(worker)
    streams = []
    try:
        for i in range(8):
            r = requests.post(
                f"{store.url}/user_request",
                json={"model": A, "prompt": f"client {i}", "max_tokens": 4000},
                stream=True,
                timeout=60,
            )
            assert r.status_code == 200, r.text
            chunks = r.iter_content(chunk_size=None)
            assert next(chunks)
            streams.append((r, chunks))
        assert store_status(store)["generating"] == 8
        assert worker_status(worker)["sequences_running"] == 8  # none of them queued
        assert worker_status(worker)["queue_depth"] == 0
        other: dict = {}

        def ask_other():
            other["response"] = requests.post(
                f"{store.url}/user_request",
                json={"model": B, "prompt": "hello", "max_tokens": 4},
                timeout=120,
            )
            other["at"] = time.monotonic()

        thread = threading.Thread(target=ask_other)
        thread.start()
        for r, chunks in streams[:7]:
            assert next(chunks)  # all of them keep streaming while B waits
            r.close()
        time.sleep(0.5)
        assert "response" not in other  # one generation on A is still running
        assert worker_status(worker)["loaded"] == A
        closed_last = time.monotonic()
        streams[7][0].close()
    finally:
        for r, _ in streams:
            r.close()
    thread.join(120)
    assert other["response"].status_code == 200, other["response"].text
    assert other["response"].headers["X-Model"] == B
    assert other["at"] > closed_last
    assert worker_status(worker)["resident"][0]["name"] == B


def test_infer_takes_the_stores_group_header_and_refuses_a_bad_one(start_worker, models_dir):
    """``X-Batch-Together`` (the store's group after a swap): a bad value is a 400 naming
    it; a group of three that only one request of reaches the worker still runs, after the
    gathering window, with the text it gets alone."""
    worker = start_worker(n_ctx=N_CTX, parallel=4)
    load(worker, models_dir)
    body = {"model": A, **job(0, max_tokens=8)}
    alone = infer(worker, job(0, max_tokens=8))
    for bad in ("0", "-1", "x", "4097", "1.5", ""):
        r = requests.post(
            f"{worker.url}/infer", json=body, headers={"X-Batch-Together": bad}, timeout=30
        )
        assert r.status_code == 400, bad
        assert "X-Batch-Together" in r.json()["error"]["message"]
    r = requests.post(
        f"{worker.url}/infer", json=body, headers={"X-Batch-Together": "3"}, timeout=60
    )
    assert r.status_code == 200 and r.text == alone
