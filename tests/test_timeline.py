"""The scheduler benchmark's timeline read from the services' JSON log lines: a swap runs
from its first action (the engine's unload, the loader's load start, the store's executor
lines) to the store's last executor line."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from benchmarks.timeline import breakdown, timeline

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
