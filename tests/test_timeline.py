"""The scheduler benchmark's timeline read from the services' JSON log lines: a swap runs
from its first action (the engine's unload, the loader's load start, the store's executor
lines) to the store's last executor line."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from benchmarks.scheduler_report import wall_verdict
from benchmarks.timeline import breakdown, floor, timeline

ORIGIN = 1_000_000.0  # the first request's send time (epoch seconds)


def line(at: float, logger: str, rid: str, message: str) -> str:
    ts = datetime.fromtimestamp(ORIGIN + at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return json.dumps({"ts": ts, "logger": logger, "request_id": rid, "message": message})


def test_a_first_load_counts_from_the_loaders_start_and_a_swap_from_the_unload(tmp_path):
    (tmp_path / "store.log").write_text(
        "\n".join(
            [
                line(1.10, "model_store_server.core.executor", "r1", "loaded a from the cache"),
                line(4.50, "model_store_server.core.executor", "r2", "loaded b from the cache"),
                "not json",
            ]
        )
    )
    (tmp_path / "worker.log").write_text(
        "\n".join(
            [
                line(1.09, "inference_worker.loader", "r1", "loaded a.gguf in 1.000s (...)"),
                line(1.30, "model_swap.console", "r1", "[infer] TTFT: 0.150s"),
                line(3.40, "inference_worker.engine", "r2", "unloaded a.gguf"),
                line(4.49, "inference_worker.loader", "r2", "loaded b.gguf in 1.000s (...)"),
                line(4.52, "inference_worker.app", "r2", "loaded b.gguf in 9.000s"),  # not a load
            ]
        )
    )
    results = [
        {"asked": "a", "sent": ORIGIN, "ttft": 1.35, "total": 2.0, "id": "r1"},
        {"asked": "b", "sent": ORIGIN + 0.01, "ttft": 4.6, "total": 5.0, "id": "r2"},
        {"asked": "b", "sent": ORIGIN + 0.02, "ttft": 4.7, "total": 5.1, "id": "r3"},
    ]
    first, second, rider = timeline(results, tmp_path)  # by first token
    assert first["swap"] == pytest.approx((0.09, 1.10), abs=1e-3)  # no unload: the load's start
    assert first["prefill"] == pytest.approx(1.15, abs=1e-3)
    assert second["swap"] == pytest.approx((3.40, 4.50), abs=1e-3)  # from the unload
    assert rider["model"] == "b" and rider["swap"] is None and rider["prefill"] is None
    assert rider["first"] == pytest.approx(4.72) and rider["last"] == pytest.approx(5.12)
    assert (first["load"], second["load"], rider["load"]) == (1.0, 1.0, None)
    summary = breakdown([first, second, rider])
    assert summary["swaps"] == 2 and summary["loading"] == pytest.approx(2.0)
    assert summary["swapping"] == pytest.approx(1.01 + 1.10)


def test_the_floor_adds_each_models_load_and_prefill_to_the_routers_generation():
    """Three models served one after another by the router; llama.cpp alone loads the file in
    0.4 s and evaluates a group's prompts in 0.1 s: every model's turn costs 0.5 s before the
    router's own first-to-last-token spans (1.0, 0.9, 1.1 s)."""
    router = {
        "wall": 6.5,
        "timeline": [
            {"model": "a", "first": 1.2, "last": 2.0},
            {"model": "a", "first": 1.1, "last": 2.1},
            {"model": "b", "first": 3.3, "last": 4.2},
            {"model": "c", "first": 5.4, "last": 6.5},
        ],
    }
    bare = {"median": 0.4, "prefill": 0.1}
    least = floor(router, bare)
    assert least["generating"] == pytest.approx(1.0 + 0.9 + 1.1)
    assert least["seconds"] == pytest.approx(3 * 0.5 + 3.0)
    assert least["ratio"] == pytest.approx(4.5 / 6.5)
    # A side that decoded faster than the router sets the floor: 2.5 s of spans.
    spans = (("a", 1.0), ("b", 0.7), ("c", 0.8))
    faster = {"timeline": [{"model": m, "first": 1.0, "last": 1.0 + d} for m, d in spans]}
    assert floor(router, bare, faster)["seconds"] == pytest.approx(1.5 + 2.5)
    slower = {"timeline": [{"model": "a", "first": 1.0, "last": 5.0}]}
    assert floor(router, bare, slower)["seconds"] == pytest.approx(4.5)


def test_a_target_below_the_floor_says_so():
    router = {"wall": 10.0, "timeline": [{"model": "a", "first": 1.0, "last": 8.0}]}
    bare = {"median": 0.5, "prefill": 0.5}  # floor 1.0 + 7.0 = 8.0 s: 0.80x
    ours = {"wall": 8.5, "timeline": [{"model": "a", "first": 1.0, "last": 9.0}]}
    line = wall_verdict("", ours, router, 0.67, bare)
    assert line == (
        "wall time <= 0.67x router's: 0.85x -> not met "
        "(floor 0.80x: the target is below what llama.cpp's load allows)"
    )
    assert wall_verdict("", ours, router, 0.9, bare).endswith(
        "0.85x -> met (floor 0.80x: the target is within what llama.cpp's load allows)"
    )
    assert wall_verdict("", ours, router, 0.9, None) == ("wall time <= 0.9x router's: 0.85x -> met")
