"""The fleet simulator (``model_swap_lab/fleet.py``) and ``model-swap simulate --workers``."""

from __future__ import annotations

import json

import pytest

from model_swap_cli.cli import build_parser
from model_swap_lab.fleet import simulate_fleet
from model_swap_lab.generate import assign_sizes, generate, model_names, spec_for
from model_swap_lab.simulate import POLICY_CHOICES, SimConfig, simulate
from model_swap_lab.trace import Request, write_sizes, write_trace

FLEET_KEYS = {"workers", "placement", "per_worker"}
ONE_EACH = SimConfig("lru", max_cache_size=1, max_loaded_models=1)


def _trace(models: str) -> list[Request]:
    return [Request(float(i), m) for i, m in enumerate(models)]


@pytest.fixture(scope="module")
def generated():
    spec = spec_for("bursty", models=10, requests=600, seed=4)
    names = model_names(10)
    return generate(spec, names), assign_sizes(names, spec)


@pytest.mark.parametrize("policy", POLICY_CHOICES)
def test_one_worker_with_locality_is_the_simulator(policy, generated):
    trace, sizes = generated
    for config in (SimConfig(policy, max_cache_size=3), SimConfig(policy, max_cache_size=10,
                   max_cache_bytes=sum(sizes.values()) // 4)):  # fmt: skip
        alone = simulate(trace, sizes, config)
        fleet = simulate_fleet(trace, sizes, config, workers=1)
        assert set(fleet) - set(alone) == FLEET_KEYS
        assert {key: fleet[key] for key in alone} == alone
        (worker,) = fleet["per_worker"]
        assert worker["requests"] == alone["requests"]
        assert worker["bytes_pushed"] == alone["bytes_pushed"]
        assert worker["loads"] == alone["load_from_store"] + alone["load_from_local_store"]


def test_locality_keeps_each_model_on_one_worker():
    result = simulate_fleet(_trace("AB" * 10), dict.fromkeys("AB", 100), ONE_EACH, workers=2)
    assert result["load_from_store"] == 2 and result["bytes_pushed"] == 200
    assert result["already_loaded"] == 18  # every request after the first two
    assert [w["requests"] for w in result["per_worker"]] == [10, 10]
    assert [w["loads"] for w in result["per_worker"]] == [1, 1]


def test_random_placement_pushes_more():
    trace, sizes = _trace("AB" * 10), dict.fromkeys("AB", 100)
    for seed in range(3):
        result = simulate_fleet(trace, sizes, ONE_EACH, workers=2, placement="random", seed=seed)
        assert result["load_from_store"] > 2
        assert sum(w["requests"] for w in result["per_worker"]) == 20
    again = simulate_fleet(trace, sizes, ONE_EACH, workers=2, placement="random", seed=1)
    assert again == simulate_fleet(trace, sizes, ONE_EACH, workers=2, placement="random", seed=1)


def test_placement_never_picks_a_worker_whose_policy_refuses():
    sizes = dict.fromkeys("ABC", 100)
    no_evict = SimConfig("no-evict", max_cache_size=1, max_loaded_models=1)
    # The first worker is full of A once A arrives: B must go to the other one.
    result = simulate_fleet(_trace("ABAB"), sizes, no_evict, workers=2)
    assert result["rejected"] == 0 and result["load_from_store"] == 2
    # C fits nowhere: refused only then, and every A and B is still served.
    result = simulate_fleet(_trace("ABCABC"), sizes, no_evict, workers=2)
    assert (result["rejected"], result["already_loaded"]) == (2, 2)
    # Random placement does send requests to a worker that refuses them.
    result = simulate_fleet(_trace("AB" * 10), sizes, no_evict, workers=2, placement="random")
    assert result["rejected"] > 0


def test_more_workers_push_fewer_bytes_under_locality(generated):
    trace, sizes = generated
    pushed = [
        simulate_fleet(trace, sizes, SimConfig("lru"), workers=n)["bytes_pushed"] for n in (1, 2, 3)
    ]
    assert pushed[0] > pushed[1] > pushed[2]


def test_bad_arguments_are_errors():
    with pytest.raises(ValueError, match="--workers must be >= 1"):
        simulate_fleet(_trace("A"), {"A": 1}, ONE_EACH, workers=0)
    with pytest.raises(ValueError, match="unknown placement 'nearest'"):
        simulate_fleet(_trace("A"), {"A": 1}, ONE_EACH, workers=2, placement="nearest")


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


def test_simulate_command_with_workers(tmp_path, capsys):
    trace, sizes = tmp_path / "t.csv", tmp_path / "sizes.csv"
    with trace.open("w") as out:
        write_trace(_trace("AB" * 10), out)
    with sizes.open("w") as out:
        write_sizes(dict.fromkeys("AB", 100), out)
    common = ["simulate", str(trace), "--sizes", str(sizes), "--max-cache-size", "1"]
    assert main([*common, "--workers", "2"]) == 0
    text = capsys.readouterr().out
    assert "workers: 2" in text and "placement: locality" in text
    assert "worker 0: requests 10, loads 1, misses 1, bytes_pushed 100" in text
    assert "worker 1: requests 10, loads 1, misses 1, bytes_pushed 100" in text
    assert main([*common, "--workers", "2", "--placement", "random", "--seed", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["placement"] == "random" and len(result["per_worker"]) == 2
    assert result["load_from_store"] > 2
    assert main([*common]) == 0  # one worker: today's output, no fleet keys
    assert "workers" not in capsys.readouterr().out
    assert main([*common, "--workers", "0"]) == 2
    assert "--workers must be >= 1, not 0" in capsys.readouterr().err


def test_placement_benchmark_runs_on_tiny_sizes(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "placement.py"
    out = tmp_path / "P.md"
    result = subprocess.run(
        [sys.executable, str(script), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = out.read_text()
    assert f"Made by `uv run python benchmarks/placement.py --quick --out {out}`" in table
    assert "| zipf | 2 | 600 |" in table and "| drift | 3 | 600 |" in table
    assert table.strip() == result.stdout.strip()
