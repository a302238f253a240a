"""One swap protocol, bounded: any failure while carrying a decision out frees the swap
slot and leaves the store's view equal to the worker's, a model file that cannot be read
evicts nothing, and every validated request logs exactly one ``[/user_request]`` line."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import requests

from model_store_server.transport.http import HttpTransport, PushResult
from model_store_server.worker_client import SourceChanged
from tests.conftest import A, B, C, ask, assert_agree, store_status, worker_status

# Exception texts that must never reach a client.
LEAKS = ("Errno", "Error(", "Traceback", "Exception")


def assert_no_exception_text(text: str) -> None:
    for leak in LEAKS:
        assert leak not in text, text


class PushThenTypeError(HttpTransport):
    """Fake for what this machine cannot produce on demand: a transport library that fails
    with an unexpected error type (as an unexpected pyverbs version would) after the real
    push has already reached the worker."""

    def push(self, model: str, path: Path, *, digest: str, load: bool) -> PushResult:
        super().push(model, path, digest=digest, load=load)
        raise TypeError("push() got an unexpected keyword argument 'gid_index'")


class TypeErrorBeforePush(HttpTransport):
    """Fake, as above, failing before a byte is sent."""

    def push(self, model: str, path: Path, *, digest: str, load: bool) -> PushResult:
        raise TypeError("unexpected pyverbs API")


def use_transport(store, transport_class) -> HttpTransport:
    """Register ``transport_class`` as the store's transport, through its app."""
    node = store.app.extensions["swap_service"].fleet.first()
    original = node.executor.transport
    node.executor.transport = transport_class(node.client)
    return original


def console_lines(caplog) -> list[str]:
    return [m for m in caplog.messages if m.startswith("[/user_request]")]


@pytest.mark.parametrize("transport_class", [PushThenTypeError, TypeErrorBeforePush])
def test_unexpected_error_during_a_swap_frees_the_slot_and_agrees(
    worker, start_store, caplog, transport_class
):
    store = start_store(worker, max_cache_size=2)
    assert ask(store, A).status_code == 200
    assert ask(store, B).status_code == 200
    original = use_transport(store, transport_class)
    with caplog.at_level(logging.INFO, logger="model_swap.console"):
        r = ask(store, C)
    assert r.status_code == 500
    assert r.headers["X-Request-Id"] in r.json()["error"]["message"]
    assert_no_exception_text(r.text)
    assert "unexpected" not in r.text
    lines = console_lines(caplog)
    assert len(lines) == 1 and "model=tiny-c.gguf action=load_from_store" in lines[0]
    status = store_status(store)
    assert not status["swapping"] and status["generating"] == 0
    assert_agree(store, worker)

    use_transport(store, type(original))
    r = ask(store, C)  # the next request works
    assert r.status_code == 200, r.text
    assert r.headers["X-Model"] == C
    assert_agree(store, worker)


def test_unreadable_model_file_evicts_nothing(worker, start_store, models_dir, caplog):
    store = start_store(worker, max_cache_size=2)
    assert ask(store, A).status_code == 200
    assert ask(store, B).status_code == 200
    # Tests run as root, so chmod 000 would not stop a read: /proc/self/mem is a regular
    # file whose first bytes cannot be read (EIO) by anyone.
    (models_dir / C).unlink()
    (models_dir / C).symlink_to("/proc/self/mem")
    with caplog.at_level(logging.INFO, logger="model_swap.console"):
        r = ask(store, C)
    # An I/O error is the store's fault (500, with the request id to find the logged cause),
    # never the 404 of a missing model (review).
    assert r.status_code == 500
    assert r.json()["error"]["message"] == (
        f"model {C} could not be read from the store (request id {r.headers['X-Request-Id']})"
    )
    assert "could not read the file of" in caplog.text
    assert r.headers.get("X-Evicted", "") == ""  # nothing was evicted (nor decided) for it
    assert sorted(entry["name"] for entry in worker_status(worker)["cached"]) == [A, B]
    lines = console_lines(caplog)
    assert len(lines) == 1 and lines[0].endswith("evicted=[]")
    assert_agree(store, worker)
    assert ask(store, A).headers["X-Cache-Action"] == "load_from_local_store"


def test_every_validated_request_logs_one_line(start_worker, start_store, models_dir, caplog):
    worker = start_worker()
    store = start_store(worker, cache_policy="no-evict", max_cache_size=1)
    with caplog.at_level(logging.INFO, logger="model_swap.console"):
        assert ask(store, A).status_code == 200
        assert ask(store, B).status_code == 503  # rejected
        assert ask(store, "missing.gguf").status_code == 404  # not in MODELS_DIR
        r = requests.post(
            f"{store.url}/v1/completions",
            json={"model": "missing.gguf", "prompt": "x", "max_tokens": 2},
            timeout=30,
        )
        assert r.status_code == 404
        assert ask(store, "bad/../name").status_code == 400  # fails validation: no line
        worker.stop()
        assert ask(store, A).status_code in (502, 503)  # the worker went away
    lines = console_lines(caplog)
    assert len(lines) == 5, lines
    assert "model=tiny-a.gguf action=load_from_store" in lines[0]
    assert "model=tiny-b.gguf action=rejected" in lines[1]
    assert lines[1].endswith("cached=[tiny-a.gguf] evicted=[]")
    assert "model=missing.gguf action=none decision_ms=0.000 worker_ms=0.0" in lines[2]
    assert lines[2].endswith("evicted=[]")
    assert "model=missing.gguf action=none" in lines[3]
    assert lines[3].endswith(" path=/v1/completions")
    assert "model=tiny-a.gguf action=" in lines[4]


def test_a_request_retried_after_drift_logs_one_line(worker, start_store, caplog):
    store = start_store(worker)
    assert ask(store, A).status_code == 200
    # The worker keeps running but loses the file behind the store's back.
    cache = Path(worker_status(worker)["model_cache_dir"])
    requests.delete(f"{worker.url}/models/{A}", timeout=10).raise_for_status()
    assert not (cache / A).exists()
    with caplog.at_level(logging.INFO, logger="model_swap.console"):
        r = ask(store, A)
    assert r.status_code == 200, r.text
    assert len(console_lines(caplog)) == 1
    assert_agree(store, worker)


def test_worker_failures_carry_fixed_messages(start_store, worker):
    store = start_store(worker_url="http://127.0.0.1:9", worker_connect_timeout=2)
    r = ask(store, A)
    assert r.status_code == 503
    assert r.json()["error"]["message"] == "worker at http://127.0.0.1:9 is unreachable"
    assert_no_exception_text(r.text)


def test_openai_request_failing_unexpectedly_logs_one_line(worker, start_store, caplog):
    store = start_store(worker)
    use_transport(store, TypeErrorBeforePush)
    with caplog.at_level(logging.INFO, logger="model_swap.console"):
        r = requests.post(
            f"{store.url}/v1/completions",
            json={"model": A, "prompt": "x", "max_tokens": 2},
            timeout=30,
        )
    assert r.status_code == 500
    assert r.headers["X-Request-Id"] in r.json()["error"]["message"]
    assert_no_exception_text(r.text)
    lines = console_lines(caplog)
    assert len(lines) == 1 and lines[0].endswith(" path=/v1/completions")
    assert "action=load_from_store" in lines[0]
    assert_agree(store, worker)


class FileChangesDuringPush(HttpTransport):
    """Fake, as above: the file shrinks while it is sent (what ``upload_file`` reports)."""

    def push(self, model: str, path: Path, *, digest: str, load: bool) -> PushResult:
        raise SourceChanged(f"{path} shrank while being sent (5 of 10)")


def test_a_file_that_changes_during_a_push_is_503_with_retry_after(worker, start_store):
    """Before: any OSError during a swap became a 404 "could not be read"."""
    store = start_store(worker, max_cache_size=2)
    assert ask(store, A).status_code == 200
    original = use_transport(store, FileChangesDuringPush)
    r = ask(store, B)
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    assert r.json()["error"]["type"] == "busy" and "changed while it was pushed" in r.text
    assert_agree(store, worker)
    use_transport(store, type(original))
    assert ask(store, B).status_code == 200  # the retry pushes the file as it is now
