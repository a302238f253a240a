"""Progress on long swaps: SSE comments while a streamed OpenAI request waits for its
model's load, the push shown in GET /status, and the progress log lines."""

from __future__ import annotations

import logging
import threading

import openai
import requests

from model_swap.progress import Progress, Transfers
from model_swap.tiny_models import write_tiny_model
from tests.conftest import A, FakeClock, ask, wait_for
from tests.test_metrics import scrape


def stream_raw(store, model, **extra):
    response = requests.post(
        f"{store.url}/v1/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 4,
            "stream": True,
            **extra,
        },
        stream=True,
        timeout=60,
    )
    blocks = [b for b in response.text.split("\n\n") if b]
    return response, blocks


def test_a_streamed_request_that_loads_its_model_gets_comments_first(worker, start_store):
    store = start_store(worker, loading_comments_after=0)
    response, blocks = stream_raw(store, A)
    assert response.status_code == 200
    assert response.headers["X-Cache-Action"] == "load_from_store"
    assert response.headers["X-Model"] == A
    comments = [b for b in blocks if b.startswith(":")]
    assert comments and all(c.startswith(f": loading {A} ") for c in comments)
    assert blocks[0] == comments[0]
    assert blocks[-1] == "data: [DONE]"
    # A hit starts with its answer, as before.
    response, blocks = stream_raw(store, A)
    assert response.headers["X-Cache-Action"] == "already_loaded"
    assert not [b for b in blocks if b.startswith(":")]


def test_openai_clients_ignore_the_comments(worker, start_store):
    store = start_store(worker, loading_comments_after=0)
    client = openai.OpenAI(base_url=f"{store.url}/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model=A, messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True
    )
    chunks = list(stream)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_a_load_that_fails_after_the_comments_ends_with_an_error_event(
    worker, start_store, models_dir
):
    # A GGUF v3 head, then garbage: it is pushed, and llama.cpp fails to load it.
    (models_dir / "broken.gguf").write_bytes(b"GGUF\x03\0\0\0" + b"\xff" * 2000)
    store = start_store(worker, loading_comments_after=0)
    response, blocks = stream_raw(store, "broken.gguf")
    assert response.status_code == 200  # the status went out with the first comment
    assert blocks[0].startswith(": loading broken.gguf")
    assert blocks[-1].startswith('data: {"error"')
    assert "model_unloadable" in blocks[-1]
    assert "[DONE]" not in response.text
    # Errors before any decision are answered as before.
    response, _ = stream_raw(store, "missing.gguf")
    assert response.status_code == 404


def test_a_load_done_before_the_first_comment_is_answered_as_without_comments(
    start_worker, start_store
):
    store = start_store(start_worker(n_ctx=64))  # LOADING_COMMENTS_AFTER: 1 s by default
    response, blocks = stream_raw(store, A)
    assert response.status_code == 200
    assert response.headers["X-Cache-Action"] == "load_from_store"
    assert not [b for b in blocks if b.startswith(":")]
    # A prompt the model's context cannot hold is refused as on a hit: 400, not 200.
    store.app.extensions["model_control"].evict(A)
    too_long = [{"role": "user", "content": "word " * 200}]
    response, _ = stream_raw(store, A, messages=too_long)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    samples = scrape(store)

    def total(name, **labels):
        wanted = set(labels.items())
        return sum(v for key, v in samples.get(name, {}).items() if wanted <= set(key))

    assert total("model_swap_requests_total", status="400") == 1
    assert total("model_swap_worker_failures_total") == 0  # the client's error, not the worker's


def test_user_request_is_unchanged(worker, start_store):
    store = start_store(worker)
    r = ask(store, A)
    assert r.headers["X-Cache-Action"] == "load_from_store"
    assert not r.text.startswith(":")


def test_progress_logs_at_most_once_a_second_with_percent_rate_and_eta(caplog):
    clock = FakeClock()
    log = logging.getLogger("test.progress")
    progress = Progress("model-x", 1000, logger=log, clock=clock)
    with caplog.at_level(logging.INFO, logger="test.progress"):
        progress.advance(100)  # no second has passed
        clock.advance(1.0)
        progress.advance(400)
        progress.advance(100)  # same second
        clock.advance(2.0)
        progress.set_done(900)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "push of model-x: 50% of 1000 bytes, 0.0 MB/s, ETA 1s",
        "push of model-x: 90% of 1000 bytes, 0.0 MB/s, ETA 0s",
    ]
    view = progress.describe()
    assert (view["bytes_done"], view["bytes_total"], view["percent"]) == (900, 1000, 90.0)


def test_running_transfers_are_listed_until_they_end():
    transfers = Transfers()
    with transfers.track(Progress("a", 10)) as progress:
        progress.advance(5)
        assert [(t["model"], t["bytes_done"], t["bytes_total"]) for t in transfers.describe()] == [
            ("a", 5, 10)
        ]
    assert transfers.describe() == []


def test_status_on_both_services_has_the_running_transfers(worker, start_store):
    store = start_store(worker)
    assert requests.get(f"{store.url}/status", timeout=10).json()["pushes"] == []
    assert requests.get(f"{worker.url}/status", timeout=10).json()["receiving"] == []


def test_the_worker_shows_an_upload_while_it_runs(worker, tmp_path):
    # Larger than the worker's read block (4 MiB), so half the file is a counted read.
    data = write_tiny_model(tmp_path / "big.gguf", size_mb=10).read_bytes()
    half = threading.Event()
    go_on = threading.Event()

    def body():
        yield data[: len(data) // 2]
        half.set()
        go_on.wait(30)
        yield data[len(data) // 2 :]

    result = {}

    def upload():
        result["response"] = requests.post(
            f"{worker.url}/cache_model",
            data=body(),
            headers={"X-Model-Name": "big.gguf", "X-Model-Size": str(len(data))},
            timeout=60,
        )

    thread = threading.Thread(target=upload)
    thread.start()
    try:
        assert half.wait(30)
        # Listed as soon as it starts; its first counted read may come a moment later.
        assert wait_for(
            lambda: any(
                r["bytes_done"]
                for r in requests.get(f"{worker.url}/status", timeout=10).json()["receiving"]
            )
        )
        (running,) = requests.get(f"{worker.url}/status", timeout=10).json()["receiving"]
        assert running["model"] == "big.gguf" and running["bytes_total"] == len(data)
        assert 0 < running["bytes_done"] < len(data)
        assert running["percent"] < 100
    finally:
        go_on.set()
        thread.join(30)
    assert result["response"].status_code == 200
    assert requests.get(f"{worker.url}/status", timeout=10).json()["receiving"] == []


def test_log_format_and_metrics_public_are_validated_settings():
    from inference_worker.config import WorkerSettings
    from model_store_server.config import StoreSettings
    from model_swap.settings import SettingsError

    for settings in (StoreSettings, WorkerSettings):
        assert settings.from_env({}).log_format == "text"
        assert settings.from_env({"LOG_FORMAT": "json", "METRICS_PUBLIC": "1"}).metrics_public
        try:
            settings.from_env({"LOG_FORMAT": "xml"})
        except SettingsError as err:
            assert "LOG_FORMAT" in str(err)
        else:
            raise AssertionError("LOG_FORMAT=xml was accepted")


def test_the_comments_follow_the_push(tmp_path):
    from model_store_server.config import StoreSettings
    from model_store_server.core.grants import Ticket
    from model_store_server.core.orchestrator import SwapService
    from model_store_server.decision import Action, Decision
    from model_store_server.loading import Loading, _Call

    service = SwapService(StoreSettings(models_dir=tmp_path, worker_url="http://127.0.0.1:9"))
    push = Loading(service, Ticket(Decision("m.gguf", Action.LOAD_FROM_STORE), True, 0.0), _Call())
    assert push.comment() == b": loading m.gguf 0%\n\n"
    with service.transfers.track(Progress("m.gguf", 1000)) as progress:
        progress.advance(450)
        assert push.comment().startswith(b": loading m.gguf 45% (450 of 1000 bytes, ")
        progress.advance(550)
        assert push.comment() == b": loading m.gguf 100% (sent; the worker is loading it)\n\n"
    # The push is over while the worker loads: the comments never go back to 0%.
    assert push.comment() == b": loading m.gguf 100% (sent; the worker is loading it)\n\n"
    local = Ticket(Decision("m.gguf", Action.LOAD_FROM_LOCAL_STORE), True, 0.0)
    assert Loading(service, local, _Call()).comment() == (
        b": loading m.gguf from the worker's disk cache\n\n"
    )
