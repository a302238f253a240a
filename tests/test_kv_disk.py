"""Kept prompt states across a swap (``inference_worker/kv_disk.py``), through a real worker
with tiny models: states saved when a model leaves memory are restored after it is loaded
again, never into another version of its file; a corrupt state file is ignored, logged and
deleted while the request succeeds; two requests extending one saved prompt read it once;
the states go with their model file."""

from __future__ import annotations

import json
import threading
import zlib
from pathlib import Path

import requests

from inference_worker import kv_disk
from inference_worker.config import WorkerSettings
from inference_worker.prefix import kv_streams
from tests.conftest import A, B, worker_status
from tests.test_engine_residency import load, unload

STORY = (
    "Once upon a time in a land far away there lived a curious fox who liked to count the "
    "stars every night and tell the owls about them"
)


def run(worker, prompt: str, max_tokens: int = 8) -> tuple[str, dict]:
    """The text of a greedy generation and its usage (the worker's events stream)."""
    r = requests.post(
        f"{worker.url}/infer",
        json={
            "model": A,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "stream_format": "events",
        },
        timeout=60,
    )
    assert r.status_code == 200, r.text
    events = [json.loads(line) for line in r.text.splitlines()]
    return "".join(e.get("text", "") for e in events), events[-1]["usage"]


def reload(worker) -> None:
    r = requests.post(
        f"{worker.url}/load_model_from_local_store", headers={"X-Model-Name": A}, timeout=60
    )
    assert r.status_code == 200, r.text


def kv_files(worker) -> list[Path]:
    cache = Path(worker_status(worker)["model_cache_dir"])
    return sorted((cache / ".kv").glob("*/*.kv"))


def resident_a(worker) -> dict:
    return next(e for e in worker_status(worker)["resident"] if e["name"] == A)


def saved_conversation(worker, models_dir) -> tuple[str, str]:
    """Load A, run the story's first turn, unload A: its state is saved on disk."""
    load(worker, models_dir, A)
    answer, _ = run(worker, STORY)
    assert unload(worker, A).status_code == 200
    assert len(kv_files(worker)) == 1
    return STORY + answer, answer


def test_saved_states_are_restored_after_unload_and_reload(start_worker, models_dir, tmp_path):
    worker = start_worker(n_ctx=512)
    plain = start_worker(n_ctx=512, prefix_cache=False, model_cache_dir=tmp_path / "plain")
    history, _ = saved_conversation(worker, models_dir)
    status = worker_status(worker)
    assert status["kv_disk"]["prompts"] == 1 and status["kv_disk"]["bytes"] > 0
    assert [f["name"] for f in status["cached"]] == [A]  # never listed as a model file
    reload(worker)
    assert resident_a(worker)["kept_prompts"] == 1 and resident_a(worker)["kept_bytes"] == 0
    text, usage = run(worker, history + " and then")
    load(plain, models_dir, A)
    expected, plain_usage = run(plain, history + " and then")
    assert text == expected
    assert usage["prompt_tokens"] == plain_usage["prompt_tokens"]
    # Only the new text was evaluated: the rest came from the saved state.
    assert usage["cached_tokens"] > usage["prompt_tokens"] // 2
    assert resident_a(worker)["restored_tokens"] == usage["cached_tokens"]
    assert worker_status(worker)["kv_disk"]["reads"] == 1


def test_a_new_version_of_the_model_discards_its_saved_states(worker, models_dir):
    history, _ = saved_conversation(worker, models_dir)
    load(worker, models_dir, B, as_name=A)  # a new version of A's file (B's weights)
    assert kv_files(worker) == []  # of the old version: deleted, never restored
    _, usage = run(worker, history + " and then")
    assert usage["cached_tokens"] == 0
    assert worker_status(worker)["kv_disk"]["discarded"] == 1


def test_a_corrupt_state_file_is_ignored_logged_and_deleted(worker, models_dir, caplog):
    history, _ = saved_conversation(worker, models_dir)
    (saved,) = kv_files(worker)
    raw = bytearray(saved.read_bytes())
    raw[-100] ^= 0xFF  # one flipped byte in the state: the checksum no longer matches
    saved.write_bytes(raw)
    reload(worker)
    text, usage = run(worker, history + " and then")
    assert text and usage["cached_tokens"] == 0  # evaluated instead
    assert kv_files(worker) == []
    assert worker_status(worker)["kv_disk"]["discarded"] == 1
    assert "truncated or corrupt" in caplog.text


def test_a_truncated_state_file_is_deleted_when_the_model_loads(worker, models_dir):
    history, _ = saved_conversation(worker, models_dir)
    (saved,) = kv_files(worker)
    saved.write_bytes(saved.read_bytes()[:-10])
    reload(worker)
    assert kv_files(worker) == []
    _, usage = run(worker, history + " and then")
    assert usage["cached_tokens"] == 0


def test_two_requests_extending_one_saved_prompt_read_it_once(worker, models_dir):
    history, _ = saved_conversation(worker, models_dir)
    reload(worker)
    usages = []

    def one(suffix):
        usages.append(run(worker, history + suffix)[1])

    threads = [threading.Thread(target=one, args=(s,)) for s in (" and then", " but later")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(usages) == 2 and all(u["cached_tokens"] > 0 for u in usages)
    assert worker_status(worker)["kv_disk"]["reads"] == 1


def test_saved_states_go_with_their_model_file(worker, models_dir):
    saved_conversation(worker, models_dir)
    assert requests.delete(f"{worker.url}/models/{A}", timeout=60).status_code == 200
    assert kv_files(worker) == []
    assert worker_status(worker)["kv_disk"]["prompts"] == 0


def test_a_state_llama_cpp_refuses_falls_back_to_evaluation(worker, models_dir, caplog):
    """A file whose checksum holds but whose state llama.cpp cannot read (cut short, header
    rewritten to match): the restore fails, the prompt is evaluated, the request succeeds."""
    history, _ = saved_conversation(worker, models_dir)
    (saved,) = kv_files(worker)
    raw = saved.read_bytes()
    magic, rest = raw[: len(kv_disk.MAGIC)], raw[len(kv_disk.MAGIC) :]
    (length,) = kv_disk._LENGTH.unpack(rest[:4])
    header, data = json.loads(rest[4 : 4 + length]), rest[4 + length :]
    data = data[: len(data) // 2]
    header.update(nbytes=len(data), crc32=zlib.crc32(data))
    encoded = json.dumps(header).encode()
    saved.write_bytes(magic + kv_disk._LENGTH.pack(len(encoded)) + encoded + data)
    reload(worker)
    text, usage = run(worker, history + " and then")
    assert text and usage["cached_tokens"] == 0
    assert "could not restore a kept prompt" in caplog.text
    assert resident_a(worker)["kept_prompts"] == 0  # forgotten


def test_the_store_counts_the_workers_prompt_cache_in_a_models_memory(
    start_worker, start_store, models_dir, tmp_path
):
    """MAX_LOADED_BYTES fits two models' footprints but not with their KV_CACHE_BYTES: the
    store keeps one resident, where it kept two with no prompt cache."""
    from model_swap.footprint import estimate
    from tests.conftest import ask, store_status

    settings = WorkerSettings()
    n_seq = kv_streams(settings.parallel, settings.prefix_cache)
    footprint = estimate(models_dir / A, 512, n_seq=n_seq).total_bytes
    kv = 64 * 1024 * 1024
    for kv_cache_bytes, resident in ((0, 2), (kv, 1)):
        worker = start_worker(
            n_ctx=512, kv_cache_bytes=kv_cache_bytes, model_cache_dir=tmp_path / str(resident)
        )
        store = start_store(
            worker, max_loaded_models=3, max_loaded_bytes=2 * footprint + kv, max_cache_size=3
        )
        for model in (A, B):
            assert ask(store, model).status_code == 200
        status = store_status(store)
        assert len(status["resident"]) == resident, status["resident"]
        assert status["resident"][-1]["estimated_bytes"] == footprint + kv_cache_bytes


def test_a_prompt_kept_in_host_memory_is_restored_after_its_slot_was_reused(
    start_worker, models_dir, tmp_path
):
    """One sequence: an unrelated prompt takes the story's cells, which the worker keeps in
    host memory; the story's next turn restores them (the worker's counters say so) and
    answers as a worker without reuse does."""
    worker = start_worker(n_ctx=512, parallel=1)
    plain = start_worker(n_ctx=512, prefix_cache=False, model_cache_dir=tmp_path / "plain")
    load(worker, models_dir, A)
    load(plain, models_dir, A)
    answer, _ = run(worker, STORY)
    run(worker, "A completely different question about the sea and its many")
    assert resident_a(worker)["kept_prompts"] == 1 and resident_a(worker)["kept_bytes"] > 0
    text, usage = run(worker, STORY + answer + " and then")
    expected, _ = run(plain, STORY + answer + " and then")
    assert text == expected
    assert 0 < usage["cached_tokens"] < usage["prompt_tokens"]
    status = resident_a(worker)
    assert status["restored_tokens"] == usage["cached_tokens"]
    assert status["reused_tokens"] < status["prompt_tokens"]
