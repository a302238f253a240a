"""The worker re-executes itself once with glibc's huge-page tunable (huge_pages.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from inference_worker.huge_pages import TUNABLE, tuned_environment
from tests.test_cli import read_until, spawn, stop


def test_the_tunable_is_added_to_an_environment_without_it():
    assert tuned_environment({"A": "1"}, "linux") == {"A": "1", "GLIBC_TUNABLES": f"{TUNABLE}=1"}
    other = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
    assert tuned_environment(other, "linux")["GLIBC_TUNABLES"] == (
        f"glibc.malloc.arena_max=2:{TUNABLE}=1"
    )


def test_an_explicit_choice_or_another_platform_is_left_alone():
    assert tuned_environment({"GLIBC_TUNABLES": f"{TUNABLE}=0"}, "linux") is None
    assert tuned_environment({"GLIBC_TUNABLES": f"x=1:{TUNABLE}=1"}, "linux") is None
    assert tuned_environment({}, "darwin") is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/PID/environ")
@pytest.mark.parametrize("given", [None, f"{TUNABLE}=0"])
def test_the_serving_worker_process_runs_with_the_tunable(tmp_path, given):
    env = {
        "WORKER_PORT": "0",
        "WORKER_HOST": "127.0.0.1",
        "MODEL_CACHE_DIR": str(tmp_path / "cache"),
    }
    if given:
        env["GLIBC_TUNABLES"] = given
    process = spawn([sys.executable, "-m", "inference_worker.cli"], env)
    try:
        read_until(process, r"inference-worker listening on", timeout=60)
        environ = Path(f"/proc/{process.pid}/environ").read_bytes().split(b"\0")
        tunables = [e for e in environ if e.startswith(b"GLIBC_TUNABLES=")]
        assert tunables == [f"GLIBC_TUNABLES={given or TUNABLE + '=1'}".encode()]
    finally:
        assert stop(process) == 0
