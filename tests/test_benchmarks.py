"""The benchmark scripts keep running end to end (tiny sizes; no timing is asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_swap_latency_runs_on_tiny_sizes():
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "swap_latency.py"),
            "--repeats",
            "1",
            "--no-gemma",
            "--tiny-mb",
            "1",
            "--push-mb",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| tiny-1mb.gguf |" in result.stdout
    assert "| HTTP transport (store -> worker) |" in result.stdout
