"""The benchmark suite keeps running end to end (tiny sizes; no timing is asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
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
