"""The four policy smoke scripts, run_all.sh and the chart script, against real servers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import B

# One pytest-xdist process runs this module: run_all.sh's output is made once per process.
pytestmark = pytest.mark.xdist_group("smoke_scripts")

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ("lru", "no-evict", "ttl", "lru-ttl")
# The first test to use run_all_output waits for run_all.sh (eight processes, four charts):
# beyond pytest's 120 s on a busy machine, within the script's own 300 s.
RUN_ALL_TIMEOUT = 360


def run_script(name: str, store_url: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ROOT / name)],
        env={**os.environ, "STORE_URL": store_url, "PYTHON": sys.executable, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def plot(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "plot_run.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def run_all_output(tmp_path_factory) -> Path:
    """Run benchmarks/run_all.sh once (TTL 1 s to keep it short) into a temporary dir."""
    out = tmp_path_factory.mktemp("smoke-out")
    result = subprocess.run(
        [str(ROOT / "benchmarks" / "run_all.sh")],
        env={
            **os.environ,
            "SMOKE_OUT_DIR": str(out),
            "SMOKE_TTL_SECONDS": "1",
            "PYTHON": sys.executable,
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASS ") == 4
    return out


@pytest.fixture
def script_output(worker, start_store) -> Callable[..., str]:
    """Run one smoke script against an in-process worker and store with the settings it
    asks for (seconds, where run_all.sh starts two processes per script); its stdout."""

    def run(script: str, **store_settings) -> str:
        store = start_store(worker, max_cache_size=2, **store_settings)
        result = run_script(script, store.url)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    return run


@pytest.mark.parametrize(
    ("policy", "steps"), [("lru", 5), ("no-evict", 3), ("ttl", 3), ("lru-ttl", 4)]
)
@pytest.mark.slow
@pytest.mark.timeout(RUN_ALL_TIMEOUT)
def test_each_policy_script_passes_against_fresh_servers(run_all_output, policy, steps):
    text = (run_all_output / f"{policy}.txt").read_text()
    assert text.count("\n=== ") == steps
    assert text.count("[http ") == steps
    assert f"PASS: all {steps} steps matched" in text


# Each check below runs twice: fast, on one script against in-process servers, and slow,
# on run_all.sh's output (every script against fresh processes).
TIMING_LINE = re.compile(
    r"^\[http \d{3} \| tcp_connect=\d+\.\d{3}s  time_to_first_byte=\d+\.\d{3}s  "
    r"generation=\d+\.\d{3}s  total=\d+\.\d{3}s \| throughput=~\d+ bytes/s\]$",
    re.M,
)


def check_timing_lines(text: str) -> None:
    assert len(TIMING_LINE.findall(text)) == 5


def check_no_evict(text: str) -> None:
    assert "actual: action=rejected evicted=[]" in text
    assert "bytes the worker received for the refused model: expected 0, got 0" in text


def check_lru_ttl(text: str) -> None:
    assert "actual: action=load_from_store evicted=[tiny-a.gguf]" in text
    assert "actual: action=load_from_store evicted=[tiny-b.gguf,tiny-c.gguf]" in text


def test_timing_lines_have_the_seed_format(script_output):
    check_timing_lines(script_output("test_cache_smoke.sh", cache_policy="lru"))


def test_no_evict_script_checks_zero_bytes_for_the_refused_model(script_output):
    check_no_evict(script_output("test_no_evict_smoke.sh", cache_policy="no-evict"))


def test_lru_ttl_shows_both_eviction_paths(script_output):
    check_lru_ttl(script_output("test_lru_ttl_smoke.sh", cache_policy="lru-ttl", ttl_seconds=1))


@pytest.mark.slow
@pytest.mark.timeout(RUN_ALL_TIMEOUT)
def test_run_all_outputs_have_timing_lines_and_both_paths(run_all_output):
    check_timing_lines((run_all_output / "lru.txt").read_text())
    check_no_evict((run_all_output / "no-evict.txt").read_text())
    check_lru_ttl((run_all_output / "lru-ttl.txt").read_text())


@pytest.mark.parametrize(("policy", "bars"), [("lru", 5), ("no-evict", 3)])
@pytest.mark.slow
@pytest.mark.timeout(RUN_ALL_TIMEOUT)
def test_charts_have_one_bar_per_step(run_all_output, tmp_path, policy, bars):
    png = run_all_output / f"{policy}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = plot(str(run_all_output / f"{policy}.txt"), "-o", str(tmp_path / "c.png"))
    assert result.returncode == 0, result.stderr
    assert f"({bars} bars)" in result.stdout
    assert (tmp_path / "c.png").stat().st_size > 1000


@pytest.mark.slow
def test_plot_reads_stdin(script_output, tmp_path):
    text = script_output("test_no_evict_smoke.sh", cache_policy="no-evict")
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "plot_run.py"), "-o", str(tmp_path / "s.png")],
        input=text,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "(3 bars)" in result.stdout
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_timing_lines_exits_1(tmp_path):
    empty = tmp_path / "nothing.txt"
    empty.write_text("no timings here\n")
    result = plot(str(empty))
    assert result.returncode == 1
    assert "no timing lines" in result.stderr
    assert not (tmp_path / "nothing.png").exists()


def test_script_refuses_a_store_with_the_wrong_policy(worker, start_store):
    store = start_store(worker, cache_policy="lru")
    result = run_script("test_no_evict_smoke.sh", store.url)
    assert result.returncode == 2
    assert "CACHE_POLICY=no-evict MAX_CACHE_SIZE=2 uv run model-swap up" in result.stderr
    assert "runs CACHE_POLICY=lru" in result.stderr


def test_script_refuses_a_store_with_the_wrong_size(worker, start_store):
    store = start_store(worker, cache_policy="lru", max_cache_size=3)
    result = run_script("test_cache_smoke.sh", store.url)
    assert result.returncode == 2
    assert "MAX_CACHE_SIZE=2" in result.stderr


def test_script_names_the_first_step_that_differed(worker, start_store):
    store = start_store(worker, cache_policy="lru", max_cache_size=2)
    result = run_script("test_cache_smoke.sh", store.url, MODEL_C=B)
    assert result.returncode == 1
    assert "FAIL: step 4 (C, cache full: evict least recently used A) differs" in result.stdout


def test_script_without_a_store_says_how_to_start_one():
    result = run_script("test_ttl_smoke.sh", "http://127.0.0.1:9")
    assert result.returncode == 2
    assert "CACHE_POLICY=ttl TTL_SECONDS=5 uv run model-swap up" in result.stderr


def test_scripts_work_with_api_keys_and_worker_token(start_worker, start_store):
    # The scripts reset the store (an admin route), so they present an admin key.
    token, client, key = (
        "worker-secret-0123456789",
        "client-key-0123456789abc",
        "admin-key-0123456789abcd",
    )
    worker = start_worker(worker_token=token)
    store = start_store(
        worker, cache_policy="no-evict", worker_token=token, api_keys=(client,), admin_keys=(key,)
    )
    refused = run_script("test_no_evict_smoke.sh", store.url)
    assert refused.returncode == 2  # without the key the status read is refused
    result = run_script("test_no_evict_smoke.sh", store.url, API_KEY=key, WORKER_TOKEN=token)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "expected 0, got 0" in result.stdout
