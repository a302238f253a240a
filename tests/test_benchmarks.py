"""The benchmark suite keeps running end to end (tiny sizes; no timing is asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(600)  # the subprocess's own limit; a busy machine takes minutes
def test_suite_runs_on_tiny_sizes(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "suite.py"),
            "--quick",
            "--out-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = (tmp_path / "RESULTS.md").read_text()
    for section in (
        "1. Push throughput",
        "2. Swap latency",
        "3. Against a peer",
        "4. Streaming",
        "5. Memory",
        "6a. Concurrency",
        "6b. Push time",
        "6c. Scale",
        "7. OpenAI API hit latency",
        "9a. Scheduler",
    ):
        assert f"## {section}" in results
    assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_gpu_check_runs_every_step_after_the_build_on_the_cpu(tmp_path):
    """``gpu_check.sh run --cpu --quick``: the steps a GPU machine runs after its CUDA build
    (model, offload log, swaps through the services, the batching benchmark with its steady
    traffic) work with the CPU llama-cpp-python, so the script cannot rot unnoticed."""
    bundle = tmp_path / "bundle"
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "run", "--cpu", "--quick", str(bundle)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = bundle / "report"
    assert "CPU run" in (report / "gpu.txt").read_text()
    assert (report / "offload-summary.txt").read_text()
    swaps = (report / "swaps.md").read_text()
    for case in ("cold swap", "warm swap", "hit"):
        assert f"| {case} |" in swaps
    batching = (report / "BATCHING.md").read_text()
    assert "## Bursts: N clients at once" in batching
    assert "## Steady traffic" in batching
    assert "closed-loop clients" in batching and "Poisson 90%" in batching
