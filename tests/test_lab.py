"""The policy lab: trace files, the generator, the simulator and a replay against real servers."""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import replace

import pytest

from model_store_server.decision import Action
from model_swap_cli.cli import build_parser
from model_swap_lab.generate import PRESETS, assign_sizes, generate, model_names, spec_for
from model_swap_lab.replay import replay
from model_swap_lab.simulate import SimConfig, footprints_from_dir, simulate
from model_swap_lab.trace import Request, TraceError, read_trace, sizes_from_dir, write_trace
from tests.conftest import A, B, C, store_status

# -- trace files -------------------------------------------------------------------------------


def test_trace_round_trip_keeps_extra_columns():
    text = "timestamp,model,prompt_tokens,max_tokens\n0,a,5,8\n0.5,b,6,2\n"
    trace = read_trace(io.StringIO(text), known={"a", "b"})
    assert [(r.timestamp, r.model, r.extra["max_tokens"]) for r in trace] == [
        (0.0, "a", "8"),
        (0.5, "b", "2"),
    ]
    out = io.StringIO()
    write_trace(trace, out)
    assert out.getvalue().splitlines()[0] == "timestamp,model,prompt_tokens,max_tokens"
    assert read_trace(io.StringIO(out.getvalue())) == trace


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("timestamp,model\n1,a\n0.5,a\n", r":3: timestamp 0.5 is before the previous one"),
        ("timestamp,model\n1,a\n2,zzz\n", r":3: unknown model 'zzz'"),
        ("timestamp,model\n1,a,extra\n", r":2: 3 columns, the header has 2"),
        ("timestamp,model\nsoon,a\n", r":2: timestamp 'soon' is not a number"),
        ("time,model\n1,a\n", r":1: the header must start with timestamp,model"),
        ("", "empty trace"),
        # an unclosed quote swallows the next line: the row that starts on line 3 is the bad one
        ('timestamp,model\n0,a\n1,"a\n2,a\n3,a\n', r":3: bad CSV: the row spans several lines"),
    ],
)
def test_bad_trace_is_an_error_naming_the_line(text, message):
    with pytest.raises(TraceError, match=message):
        read_trace(io.StringIO(text), known={"a"})


def test_sizes_from_dir_lists_only_what_the_store_serves(models_dir):
    (models_dir / ".partial.gguf").write_bytes(b"x")
    (models_dir / "notes.txt").write_bytes(b"x")
    (models_dir / "sub.gguf").mkdir()
    assert sorted(sizes_from_dir(models_dir)) == [A, B, C]


# -- generator -----------------------------------------------------------------------------------


def test_generator_is_seeded_and_sorted():
    spec = spec_for("bursty", requests=500, seed=3)
    first, again = generate(spec), generate(spec)
    assert first == again
    assert generate(spec_for("bursty", requests=500, seed=4)) != first
    times = [r.timestamp for r in first]
    assert times == sorted(times)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--period", "0", "--daily-amplitude", "0.5"], "period must be > 0 seconds"),
        (["--daily-amplitude", "1.5"], "daily_amplitude must be in [0, 1]"),
        (["--bursts", "-0.1"], "burst_probability must be in [0, 1]"),
        (["--drift", "2"], "drift must be in [0, 1]"),
        (["--requests", "0"], "requests must be >= 1"),
        (["--models", "1"], "models must be >= 2"),
        (["--rate", "0"], "rate must be > 0"),
        (["--zipf", "-1"], "zipf must be >= 0"),
        (["--max-tokens", "0"], "max_tokens must be >= 1"),
    ],
)
def test_generator_rejects_a_bad_spec_with_one_line(flags, message, capsys):
    assert main(["trace", "generate", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_alibaba_preset_matches_the_reported_skew():
    spec = spec_for("alibaba", models=100, requests=20000)
    counts = Counter(r.model for r in generate(spec))
    ranked = sorted(model_names(100), key=lambda m: counts[m])
    cold_share = sum(counts[m] for m in ranked[:94]) / spec.requests
    assert 0.008 < cold_share < 0.02  # 94% of the models get ~1.4% of the requests


def test_every_preset_generates():
    for name in PRESETS:
        assert len(generate(spec_for(name, requests=50))) == 50


def test_drift_preset_changes_the_favourites_between_phases_and_bursts_cold_models():
    spec = spec_for("drift", requests=5000)
    trace = generate(spec)
    phase = spec.requests // spec.phases

    def top(requests, n=8):
        return {m for m, _ in Counter(r.model for r in requests).most_common(n)}

    phases = [trace[i * phase : (i + 1) * phase] for i in range(spec.phases)]
    assert all(len(top(a) - top(b)) >= 2 for a, b in zip(phases, phases[1:], strict=False))
    # the same trace without drift keeps its favourites
    still = generate(replace(spec, phases=1, burst_probability=0))
    assert top(still[:phase], 3) == top(still[-phase:], 3)
    # bursts fall on the colder half: its share of the requests grows by their volume
    cold = sorted(model_names(spec.models), key=Counter(r.model for r in still).get)[:20]

    def cold_share(spec):
        return sum(r.model in cold for r in generate(spec)) / spec.requests

    calm = replace(spec, phases=1, burst_probability=0)
    assert cold_share(replace(calm, burst_probability=0.004)) > cold_share(calm) + 0.03


# -- the Azure Functions 2019 importer ----------------------------------------------------------

AZURE = (
    "HashOwner,HashApp,HashFunction,Trigger,1,2,3\n"
    "o1,a1,f1,http,2,0,1\n"
    "o1,a1,f2,timer,5,5,5\n"
    "o2,a2,f3,queue,0,1,0\n"
)


def test_azure_import_maps_the_busiest_functions_to_models(tmp_path):
    from model_swap_lab.azure import read_azure

    imported = read_azure(io.StringIO(AZURE), ["big.gguf", "small.gguf"], seed=1)
    counts = Counter(r.model for r in imported.requests)
    assert counts == {"big.gguf": 15, "small.gguf": 3}  # f2 (15 calls), then f1 (3)
    assert imported.mapped == {"big.gguf": "o1/a1/f2", "small.gguf": "o1/a1/f1"}
    assert (imported.functions, imported.dropped_invocations) == (3, 1)
    times = [r.timestamp for r in imported.requests]
    assert times == sorted(times) and times[0] >= 0 and times[-1] < 180
    small = [r.timestamp for r in imported.requests if r.model == "small.gguf"]
    assert sum(t < 60 for t in small) == 2 and sum(t >= 120 for t in small) == 1
    # minutes 2-3 only, from 0 s; scale 2 doubles every count
    later = read_azure(io.StringIO(AZURE), ["m"], first_minute=2, scale=2)
    assert len(later.requests) == 20 and max(r.timestamp for r in later.requests) < 120
    # the command writes a trace the lab reads
    path, out, sizes = tmp_path / "day.csv", tmp_path / "t.csv", tmp_path / "s.csv"
    path.write_text(AZURE)
    argv = ["trace", "azure", str(path), "--models", "2", "--out", str(out)]
    assert main([*argv, "--sizes-out", str(sizes)]) == 0
    from model_swap_lab.trace import read_sizes

    assert len(read_trace(out, known=read_sizes(sizes))) == 18


@pytest.mark.parametrize(
    "text, message",
    [
        ("timestamp,model\n0,a\n", "day.csv:1: the header must start with HashOwner"),
        ("HashOwner,HashApp,HashFunction,Trigger,1,3\n", "day.csv:1: minute column 2 is named"),
        (AZURE + "o3,a3,f4,http,1,x,0\n", "day.csv:5: invocation counts must be whole numbers"),
        (AZURE + "o3,a3,f4,http,1\n", "day.csv:5: 5 columns, the header has 7"),
    ],
)
def test_azure_import_errors_name_the_line(tmp_path, capsys, text, message):
    path = tmp_path / "day.csv"
    path.write_text(text)
    assert main(["trace", "azure", str(path)]) == 2
    assert message in capsys.readouterr().err


# -- simulator -----------------------------------------------------------------------------------


def _trace(models: str) -> list[Request]:
    return [Request(float(i), m) for i, m in enumerate(models)]


def test_simulator_replays_the_seed_lru_sequence():
    seen = []
    result = simulate(
        _trace("AABCA"),
        dict.fromkeys("ABC", 100),
        on_decision=lambda request, decision: seen.append((decision.action, decision.evicted)),
    )
    assert seen == [
        (Action.LOAD_FROM_STORE, ()),
        (Action.ALREADY_LOADED, ()),
        (Action.LOAD_FROM_STORE, ()),
        (Action.LOAD_FROM_STORE, ("A",)),
        (Action.LOAD_FROM_STORE, ("B",)),
    ]
    assert result["load_from_store"] == 4 and result["evicted"] == 2
    assert result["bytes_pushed"] == 400


def test_belady_is_a_lower_bound_under_count_budgets():
    spec = spec_for("zipf", models=12, requests=1500, seed=1)
    names = model_names(12)
    trace, sizes = generate(spec, names), assign_sizes(names, spec)
    misses = {
        policy: simulate(trace, sizes, SimConfig(policy, max_cache_size=4))["misses"]
        for policy in ("lru", "gdsf", "lfu-da", "lru-ttl", "belady")
    }
    assert all(misses["belady"] <= value for value in misses.values())


def test_gdsf_pushes_fewer_bytes_than_lru_under_a_byte_budget():
    spec = spec_for("zipf", models=30, requests=3000, seed=2)
    names = model_names(30)
    trace, sizes = generate(spec, names), assign_sizes(names, spec)
    budget = SimConfig("lru", max_cache_size=30, max_cache_bytes=15 * 1024**3)
    lru = simulate(trace, sizes, budget)
    gdsf = simulate(trace, sizes, replace(budget, policy="gdsf"))
    assert gdsf["bytes_pushed"] < lru["bytes_pushed"]


def closed_port_url() -> str:
    """A URL where nothing listens (a port just released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_replay_counts_network_failures_as_errors_and_goes_on():
    result = replay([Request(0, A), Request(0, B)], closed_port_url(), speed=0, sizes={}, timeout=5)
    assert (result["requests"], result["errors"], result["load_from_store"]) == (2, 2, 0)


def main(argv: list[str]) -> int:
    """``model-swap`` in this process, without ``main``'s logging set-up (which would
    bind the root logger to this test's captured output)."""
    args = build_parser().parse_args(argv)
    return args.func(args)


def test_simulate_and_generate_commands(tmp_path, tiny_models_dir, capsys):
    trace = tmp_path / "t.csv"
    assert main(["trace", "generate", "--models-dir", str(tiny_models_dir), "--requests",
                 "40", "--out", str(trace)]) == 0  # fmt: skip
    assert main(["simulate", str(trace), "--policy", "gdsf", "--models-dir",
                 str(tiny_models_dir), "--json"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    for key in ("requests", "already_loaded", "load_from_local_store", "load_from_store",
                "rejected", "evicted", "bytes_pushed", "swap_seconds", "p50_wait_ms",
                "p95_wait_ms"):  # fmt: skip
        assert key in result
    assert result["requests"] == 40
    trace.write_text("timestamp,model\n0,nope.gguf\n")
    assert main(["simulate", str(trace), "--models-dir", str(tiny_models_dir)]) == 2
    assert "t.csv:2: unknown model 'nope.gguf'" in capsys.readouterr().err


# -- against real servers ----------------------------------------------------------------------


SEQUENCE = [A, A, B, C, A, B, B, C, C, A, B, A, C, C, B]


# gdsf is left out: its live priorities weigh the rates the store measures as it goes,
# which the simulator's fixed cost model only approximates (see docs/lab.md).
@pytest.mark.parametrize("policy", ["lru", "no-evict", "lfu-da"])
def test_replay_with_one_client_matches_the_simulator(policy, worker, start_store, models_dir):
    store = start_store(worker, cache_policy=policy, max_cache_size=2)
    trace = [Request(i * 0.01, model, {"max_tokens": "2"}) for i, model in enumerate(SEQUENCE)]
    live = replay(trace, store.url, speed=0)
    sizes = sizes_from_dir(models_dir)
    simulated = simulate(
        trace,
        sizes,
        SimConfig(policy, max_cache_size=2),
        footprints=footprints_from_dir(models_dir, sizes),
    )
    keys = ("already_loaded", "load_from_local_store", "load_from_store", "rejected", "evicted")
    assert {k: live[k] for k in keys} == {k: simulated[k] for k in keys}
    assert live["bytes_pushed"] == simulated["bytes_pushed"]
    assert live["errors"] == 0


def test_replay_counts_a_model_too_large_as_rejected_like_the_simulator(
    worker, start_store, models_dir
):
    sizes = sizes_from_dir(models_dir)
    budget = min(sizes.values()) - 1  # every tiny model is larger than the disk budget
    store = start_store(worker, max_cache_bytes=budget)
    trace = [Request(0, A), Request(0, B), Request(0, A)]
    live = replay(trace, store.url, speed=0)
    simulated = simulate(
        trace,
        sizes,
        SimConfig(max_cache_bytes=budget),
        footprints=footprints_from_dir(models_dir, sizes),
    )
    actions = ("already_loaded", "load_from_local_store", "load_from_store", "rejected")
    assert live["rejected"] == simulated["rejected"] == 3
    assert live["errors"] == 0
    for result in (live, simulated):
        assert result["requests"] == sum(result[k] for k in actions)


def test_status_explains_the_next_victim(worker, start_store):
    store = start_store(worker, cache_policy="gdsf", max_cache_size=2)
    replay([Request(0, A), Request(0, A), Request(0, B)], store.url, speed=0)
    explain = store_status(store)["explain"]
    assert [row["name"] for row in explain["cache"]] == [B, A]  # A: two uses
    assert explain["cache"][0]["reason"].startswith("next victim")
    assert explain["cache"][0]["priority"] < explain["cache"][1]["priority"]
    assert [row["name"] for row in explain["resident"]] == [B]
    rates = explain["cost_model"]
    assert rates["push_observations"] + rates["load_observations"] >= 1  # learned from swaps


def test_adaptive_store_explains_its_leading_expert(worker, start_store):
    store = start_store(worker, cache_policy="adaptive", max_cache_size=2)
    replay([Request(0, A), Request(0, B), Request(0, A), Request(0, C)], store.url, speed=0)
    rows = store_status(store)["explain"]["cache"]
    assert len(rows) == 2 and C in [row["name"] for row in rows]
    assert all(row["expert"] == "gdsf" for row in rows)  # the first expert leads at first
    assert set(rows[0]["expert_swap_seconds"]) == {"gdsf", "lru", "lfu-da", "gdsf-aged"}
    assert rows[0]["reason"].startswith("next victim, lowest in order: gdsf leads by")


def test_replay_reports_the_simulators_swap_seconds_and_simulate_calibrates_from_a_store(
    worker, start_store, models_dir, tmp_path, capsys
):
    store = start_store(worker, max_cache_size=2)
    trace = tmp_path / "t.csv"
    trace.write_text(f"timestamp,model,max_tokens\n0,{A},2\n0,{B},2\n0,{C},2\n0,{A},2\n")
    assert main(["replay", str(trace), "--store", store.url, "--speed", "0", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["simulated_actions_match"] is True
    assert result["simulated_swap_seconds"] > 0
    assert result["simulated_over_live"] == pytest.approx(
        result["simulated_swap_seconds"] / result["swap_seconds"], abs=0.001
    )
    rates = store_status(store)["explain"]["cost_model"]
    assert rates["push_observations"] >= 1
    argv = ["simulate", str(trace), "--models-dir", str(models_dir), "--json"]
    assert main([*argv, "--calibrate-from", store.url]) == 0
    simulated = json.loads(capsys.readouterr().out)
    assert simulated["cost_model"]["push_bytes_per_s"] == pytest.approx(rates["push_bytes_per_s"])
    assert simulated["cost_model"]["load_bytes_per_s"] == pytest.approx(rates["load_bytes_per_s"])
    assert main([*argv, "--calibrate-from", "http://127.0.0.1:9"]) == 1
    assert "the store did not answer" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(300)  # the subprocess's own limit
def test_policies_benchmark_runs_on_tiny_sizes(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "policies.py"
    result = subprocess.run(
        [sys.executable, str(script), "--quick", "--no-live", "--out", str(tmp_path / "P.md")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = (tmp_path / "P.md").read_text()
    assert "## 4. Targets" in table and "| gdsf-aged |" in table and "| adaptive |" in table
    assert table.strip() in result.stdout  # the same report on standard output
    for kind in ("count", "bytes"):
        assert (tmp_path / f"policies-{kind}.png").read_bytes()[:4] == b"\x89PNG"


def test_replay_command(worker, start_store, tmp_path, capsys):
    store = start_store(worker)
    trace = tmp_path / "t.csv"
    trace.write_text(f"timestamp,model,max_tokens\n0,{A},2\n0.01,{A},2\n0.02,{B},2\n")
    assert main(["replay", str(trace), "--store", store.url, "--speed", "0", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["load_from_store"], result["already_loaded"], result["errors"]) == (2, 1, 0)
    assert result["ttfb_p50_ms"] > 0
    # again with --reset: the worker starts empty, so A is pushed again
    assert (
        main(["replay", str(trace), "--store", store.url, "--speed", "0", "--reset", "--json"]) == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert (result["load_from_store"], result["already_loaded"], result["errors"]) == (2, 1, 0)
    trace.write_text("timestamp,model\n1,a\n0,a\n")
    assert main(["replay", str(trace), "--store", store.url]) == 2
    assert "t.csv:3: timestamp 0 is before the previous one" in capsys.readouterr().err
