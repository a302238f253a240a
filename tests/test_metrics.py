"""GET /metrics on both services: real servers, real tiny models, parsed with
prometheus_client's own parser."""

from __future__ import annotations

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import A, B, C, ask, step

TOKEN = "metrics-test-token-0123456789"


def scrape(server, **kw) -> dict[str, dict[tuple, float]]:
    """``{sample name: {sorted label items: value}}`` of one scrape."""
    r = requests.get(f"{server.url}/metrics", timeout=10, **kw)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/plain")
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples, name, **labels) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def test_a_scrape_during_the_seed_lru_sequence_shows_the_swaps(worker, start_store):
    store = start_store(worker, cache_policy="lru", max_cache_size=2)
    step(store, worker, A, "load_from_store")
    step(store, worker, A, "already_loaded")
    step(store, worker, B, "load_from_store")
    mid = scrape(store)
    assert (
        value(
            mid,
            "model_swap_requests_total",
            route="/user_request",
            action="load_from_store",
            status="200",
        )
        == 2
    )
    assert value(mid, "model_swap_evictions_total", reason="capacity") == 0
    step(store, worker, C, "load_from_store", A)
    step(store, worker, A, "load_from_store", B)
    end = scrape(store)
    seed = {"route": "/user_request", "status": "200"}
    assert value(end, "model_swap_requests_total", action="load_from_store", **seed) == 4
    assert value(end, "model_swap_requests_total", action="already_loaded", **seed) == 1
    assert value(end, "model_swap_model_requests_total", model=A, action="load_from_store") == 2
    assert value(end, "model_swap_evictions_total", reason="capacity") == 2
    assert value(end, "model_swap_evictions_total", reason="ttl") == 0
    sizes = sum(
        (store.app.extensions["swap_service"].models_dir / m).stat().st_size for m in (A, B, C, A)
    )
    assert value(end, "model_swap_pushed_bytes_total", transport="http") == sizes
    assert value(end, "model_swap_push_seconds_count", transport="http") == 4
    assert value(end, "model_swap_push_bytes_per_second_count", transport="http") == 4
    assert value(end, "model_swap_swap_wait_seconds_count") == 5
    assert value(end, "model_swap_time_to_first_byte_seconds_count", route="/user_request") == 5
    assert value(end, "model_swap_models", tier="cache") == 2
    assert value(end, "model_swap_models_max", tier="cache") == 2
    assert value(end, "model_swap_models", tier="resident") == 1
    assert value(end, "model_swap_model_bytes", tier="cache", model=A) > 0
    assert value(end, "model_swap_requests_generating") == 0
    assert value(end, "model_swap_requests_waiting") == 0
    assert value(end, "model_swap_resyncs_total", result="ok") >= 1
    assert value(end, "model_swap_worker_synced") == 1

    w = scrape(worker)
    assert value(w, "model_swap_worker_uploads_total", result="ok") == 4
    assert value(w, "model_swap_worker_received_bytes_total") == sizes
    assert value(w, "model_swap_worker_loads_total", result="ok") == 4
    assert value(w, "model_swap_worker_load_seconds_count") == 4
    assert value(w, "model_swap_worker_evictions_total") == 2
    assert value(w, "model_swap_worker_generations_total", model=A) == 3
    assert value(w, "model_swap_worker_tokens_generated_total", model=A) > 0
    assert value(w, "model_swap_worker_queue_wait_seconds_count") == 5
    assert value(w, "model_swap_worker_cached_models") == 2
    assert value(w, "model_swap_worker_resident_models") == 1


def test_explicit_and_ttl_removals_are_counted_by_reason(worker, start_store):
    from tests.conftest import FakeClock

    clock = FakeClock()
    store = start_store(
        worker,
        cache_policy="lru-ttl",
        max_cache_size=3,
        max_loaded_models=2,
        ttl_seconds=30,
        clock=clock,
    )
    assert ask(store, A).status_code == 200
    assert ask(store, B).status_code == 200
    assert requests.post(f"{store.url}/models/{B}/unload", timeout=30).status_code == 200
    clock.advance(60)
    r = ask(store, C)
    assert r.headers["X-Evicted"] == f"{A},{B}"
    samples = scrape(store)
    assert value(samples, "model_swap_unloads_total", reason="explicit") == 1
    assert value(samples, "model_swap_evictions_total", reason="ttl") == 2
    assert value(samples, "model_swap_load_seconds_count") == 0
    assert value(samples, "model_swap_swap_seconds_count", action="unload") == 1


def test_rejections_and_unknown_models_are_counted_with_their_status(worker, start_store):
    store = start_store(worker, cache_policy="no-evict", max_cache_size=1)
    assert ask(store, A).status_code == 200
    assert ask(store, B).status_code == 503
    assert ask(store, "missing.gguf").status_code == 404
    samples = scrape(store)
    assert (
        value(
            samples,
            "model_swap_requests_total",
            route="/user_request",
            action="rejected",
            status="503",
        )
        == 1
    )
    assert (
        value(
            samples, "model_swap_requests_total", route="/user_request", action="none", status="404"
        )
        == 1
    )


def test_worker_failures_are_counted(start_store, tmp_path):
    store = start_store(None, worker_url="http://127.0.0.1:9", worker_connect_timeout=0.5)
    assert ask(store, A).status_code == 503
    samples = scrape(store)
    assert value(samples, "model_swap_worker_failures_total", kind="unavailable") >= 1
    assert value(samples, "model_swap_resyncs_total", result="failed") >= 1


def test_metrics_need_the_key_unless_public(start_worker, start_store):
    worker = start_worker(worker_token=TOKEN)
    public_worker = start_worker(
        worker_token=TOKEN, metrics_public=True, model_cache_dir=worker_cache_dir(worker)
    )
    store = start_store(worker, worker_token=TOKEN, api_keys=(TOKEN,))
    public_store = start_store(worker, worker_token=TOKEN, api_keys=(TOKEN,), metrics_public=True)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for server in (worker, store):
        assert requests.get(f"{server.url}/metrics", timeout=10).status_code == 401
        assert scrape(server, headers=auth)
    for server in (public_worker, public_store):
        assert scrape(server)
        # Only /metrics is opened.
        assert requests.get(f"{server.url}/status", timeout=10).status_code == 401


def worker_cache_dir(worker):
    return worker.app.extensions["model_cache"].directory.parent / "worker-cache-public"


def test_two_stores_in_one_process_have_their_own_registries(worker, start_store):
    first = start_store(worker, cache_policy="lru", max_cache_size=2)
    second = start_store(worker, cache_policy="lru", max_cache_size=2)
    assert ask(first, A).status_code == 200
    assert (
        value(
            scrape(first),
            "model_swap_requests_total",
            route="/user_request",
            action="load_from_store",
            status="200",
        )
        == 1
    )
    assert (
        value(
            scrape(second),
            "model_swap_requests_total",
            route="/user_request",
            action="load_from_store",
            status="200",
        )
        == 0
    )


def test_labelled_counters_exist_at_zero_before_their_first_event(worker, start_store):
    """increase() and alerts need a series before its first increment."""
    store = start_store(worker, transport="auto")
    text = requests.get(f"{store.url}/metrics", timeout=10).text
    for series in (
        'model_swap_worker_failures_total{kind="unavailable"} 0.0',
        'model_swap_worker_failures_total{kind="error"} 0.0',
        'model_swap_resyncs_total{result="failed"} 0.0',
        'model_swap_pushed_bytes_total{transport="link"} 0.0',
        'model_swap_pushed_bytes_total{transport="http"} 0.0',
        f'model_swap_model_requests_total{{action="load_from_store",model="{A}"}} 0.0',
    ):
        assert series in text, series
    text = requests.get(f"{worker.url}/metrics", timeout=10).text
    for series in (
        'model_swap_worker_uploads_total{result="no_space"} 0.0',
        'model_swap_worker_loads_total{result="failed"} 0.0',
        'model_swap_worker_unloads_total{endpoint="evict"} 0.0',
    ):
        assert series in text, series
    assert ask(store, A).status_code == 200
    text = requests.get(f"{worker.url}/metrics", timeout=10).text
    assert f'model_swap_worker_tokens_generated_total{{model="{A}"}}' in text
