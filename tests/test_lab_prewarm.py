"""Prewarm in the lab: the simulator with prewarm off is today's simulator, on for every
policy it acts only on patterns, and ``model-swap simulate --prewarm histogram`` reports it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.policies_prewarm import config as budgets
from model_store_server.policies import POLICIES
from model_swap_lab.azure import read_azure
from model_swap_lab.generate import assign_sizes, generate, model_names, spec_for
from model_swap_lab.simulate import OFFLINE, SimConfig, simulate
from model_swap_lab.trace import write_sizes, write_trace

BEFORE = json.loads((Path(__file__).parent / "data" / "simulate_before_prewarm.json").read_text())
KEYS = (
    "already_loaded",
    "load_from_local_store",
    "load_from_store",
    "rejected",
    "evicted",
    "unloaded",
    "bytes_pushed",
    "swap_seconds",
    "p95_wait_ms",
)


def workload(preset: str, requests: int, models: int):
    spec = spec_for(preset, requests=requests, models=models)
    names = model_names(spec.models)
    sizes = assign_sizes(names, spec)
    return spec, sizes, generate(spec, names)


@pytest.mark.parametrize("preset", ["zipf", "bursty"])
@pytest.mark.parametrize("policy", [*POLICIES, OFFLINE])
def test_prewarm_off_is_todays_simulator(preset, policy):
    """The figures recorded from the simulator before prewarm existed (the JSON beside
    this file, written by main's code at 12e5479), for every policy and two budgets."""
    spec, sizes, trace = workload(preset, 400, 12)
    total = sum(sizes.values())
    configs = {
        "count3": SimConfig(policy, 3),
        "bytes25": SimConfig(
            policy,
            max_cache_size=12,
            max_cache_bytes=int(total * 0.25),
            max_loaded_models=3,
            max_loaded_bytes=int(total * 0.15),
        ),
    }
    for label, config in configs.items():
        result = simulate(trace, sizes, config)
        assert {k: result[k] for k in KEYS} == BEFORE[f"{preset}/{policy}/{label}"]
        assert result["prewarm_loads"] == result["prewarm_wasted"] == 0
        assert result["cold_starts"] == result["requests"] - result["already_loaded"]


def periodic_config(policy: str, sizes: dict, prewarm: str) -> SimConfig:
    """The benchmark's budgets (POLICIES.md section 5) at 30% memory."""
    return budgets(policy, sizes, 0.3, prewarm)


@pytest.mark.parametrize("policy", [p for p in POLICIES if p != "no-evict"])
def test_prewarm_cuts_cold_starts_on_timers(policy):
    spec, sizes, trace = workload("periodic", 1500, 16)
    off = simulate(trace, sizes, periodic_config(policy, sizes, "off"))
    on = simulate(trace, sizes, periodic_config(policy, sizes, "histogram"))
    assert on["prewarm_loads"] > 0 and on["prewarm_hits"] > 0
    assert on["cold_starts"] < 0.85 * off["cold_starts"]
    assert on["requests"] == off["requests"]


def test_a_fixed_ttl_gives_way_to_the_tail():
    """Under a time-to-live a timer's model stays loaded to its next request instead of
    being unloaded after the TTL and prewarmed again: loads fall below one per request."""
    spec, sizes, trace = workload("periodic", 800, 12)
    on = simulate(trace, sizes, periodic_config("ttl", sizes, "histogram"))
    lru = simulate(trace, sizes, periodic_config("lru", sizes, "histogram"))
    assert on["loads"] < 0.8 * on["requests"]
    assert on["loads"] <= 1.1 * lru["loads"]
    assert on["cold_starts"] <= 1.1 * lru["cold_starts"]


@pytest.mark.parametrize("preset", ["zipf", "drift", "bursty"])
def test_prewarm_does_nothing_without_a_pattern(preset):
    spec, sizes, trace = workload(preset, 1500, 20)
    off = simulate(trace, sizes, periodic_config("lru", sizes, "off"))
    on = simulate(trace, sizes, periodic_config("lru", sizes, "histogram"))
    # It knows when not to act: (almost) no prewarm, within the targets.
    assert on["prewarm_loads"] <= 0.01 * on["requests"]
    assert on["cold_starts"] <= 1.02 * off["cold_starts"]
    assert on["bytes_pushed"] <= 1.05 * off["bytes_pushed"]


def test_memory_byte_seconds_counts_resident_bytes_over_time():
    from model_swap_lab.trace import Request

    trace = [Request(0.0, "a", {}), Request(10.0, "a", {}), Request(30.0, "b", {})]
    config = SimConfig("lru", max_cache_size=2, max_loaded_models=1)
    result = simulate(trace, {"a": 100, "b": 50}, config)
    assert result["memory_byte_seconds"] == pytest.approx(100 * 30, rel=0.01)
    assert result["cold_starts"] == 2


def main(argv: list[str]) -> int:
    from model_swap_cli.cli import build_parser

    args = build_parser().parse_args(argv)
    return args.func(args)


def test_simulate_command_reports_prewarm(tmp_path, capsys):
    spec, sizes, trace = workload("periodic", 800, 12)
    with open(tmp_path / "t.csv", "w") as out:
        write_trace(trace, out)
    with open(tmp_path / "sizes.csv", "w") as out:
        write_sizes(sizes, out)
    total = sum(sizes.values())
    command = ["simulate", str(tmp_path / "t.csv"), "--sizes", str(tmp_path / "sizes.csv")]
    command += ["--max-cache-size", "12", "--max-loaded-models", "12"]
    command += ["--max-loaded-bytes", str(int(total * 0.3)), "--prewarm", "histogram", "--json"]
    assert main(command) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("cold_starts", "prewarm_loads", "prewarm_wasted", "memory_byte_seconds"):
        assert key in result
    assert result["prewarm_loads"] > 0
    assert result["config"]["prewarm"] == "histogram"
    assert main([*command, "--workers", "2"]) == 2
    assert "--workers 1" in capsys.readouterr().err


def test_azure_traces_are_usable_as_they_are(tmp_path):
    """A timer function in the Azure format (one invocation every 5 minutes) prewarms."""
    minutes = 600
    rows = ["HashOwner,HashApp,HashFunction,Trigger," + ",".join(map(str, range(1, 1441)))]
    timer = ["0"] * 1440
    for minute in range(0, minutes, 5):
        timer[minute] = "1"
    noise = ["0"] * 1440
    for minute in range(0, minutes, 7):
        noise[minute] = "2"
    rows.append("o,a,f1,timer," + ",".join(timer))
    rows.append("o,a,f2,http," + ",".join(noise))
    path = tmp_path / "invocations_per_function_md.anon.d01.csv"
    path.write_text("\n".join(rows) + "\n")
    trace = read_azure(path, models=["m0.gguf", "m1.gguf"], seed=0).requests
    sizes = {"m0.gguf": 10**9, "m1.gguf": 10**9}
    config = SimConfig(
        "lru", max_cache_size=2, max_loaded_models=1, prewarm="histogram", prewarm_margin=60
    )
    result = simulate(trace, sizes, config)
    assert result["prewarm_loads"] > 0
    assert result["cold_starts"] < simulate(trace, sizes, SimConfig("lru", 2))["cold_starts"]
