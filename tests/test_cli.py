"""The command lines: seed entry points, ``model-swap tiny-models`` and ``model-swap up``."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_until(process: subprocess.Popen, pattern: str, timeout: float = 120) -> re.Match:
    """Read the process's merged output line by line until ``pattern`` matches."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            if process.poll() is not None:
                break
            continue
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match
    raise AssertionError(f"{pattern!r} not seen; output was:\n{''.join(seen)}")


def spawn(args, env, cwd=ROOT) -> subprocess.Popen:
    return subprocess.Popen(
        args,
        cwd=cwd,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stop(process: subprocess.Popen, sig=signal.SIGTERM) -> int:
    if process.poll() is None:
        process.send_signal(sig)
    try:
        return process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()


def test_tiny_models_command(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "model_swap.cli", "tiny-models", str(tmp_path), "--count", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-a.gguf", "tiny-b.gguf"]


def test_tiny_models_rejects_bad_count(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "model_swap.cli", "tiny-models", str(tmp_path), "--count", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--count" in result.stderr


@pytest.mark.parametrize(
    ("directory", "script", "env_port", "name"),
    [
        ("inference_worker", "inference_worker.py", "WORKER_PORT", "inference-worker"),
        ("model_store_server", "model_store_server.py", "STORE_PORT", "model-store-server"),
    ],
)
def test_seed_entry_points_start_and_stop(tmp_path, directory, script, env_port, name):
    env = {
        env_port: "0",
        "WORKER_HOST": "127.0.0.1",
        "STORE_HOST": "127.0.0.1",
        "MODEL_CACHE_DIR": str(tmp_path / "cache"),
        "MODELS_DIR": str(tmp_path / "models"),
    }
    process = spawn([sys.executable, script], env, cwd=ROOT / directory)
    try:
        match = read_until(process, rf"{name} listening on (http://\S+)", timeout=60)
        assert requests.get(f"{match.group(1)}/healthz", timeout=5).json() == {"ok": True}
    finally:
        assert stop(process) == 0


def test_model_swap_up_serves_gemma_and_stops_cleanly(tmp_path):
    store_port, worker_port = free_port(), free_port()
    env = {
        "MODELS_DIR": str(tmp_path / "models"),
        "MODEL_CACHE_DIR": str(tmp_path / "cache"),
        "STORE_PORT": str(store_port),
        "WORKER_PORT": str(worker_port),
        "STORE_HOST": "127.0.0.1",
        "WORKER_HOST": "127.0.0.1",
    }
    process = spawn([sys.executable, "-m", "model_swap.cli", "up"], env)
    try:
        read_until(process, r"model-swap is up", timeout=120)
        curl = read_until(process, r"curl -N (\S+)").group(1)
        assert curl == f"http://localhost:{store_port}/user_request"
        r = requests.post(
            curl,
            json={
                "prompt": "The capital of France is",
                "model": "gemma-3-270m-q4_k_m.gguf",
                "max_tokens": 8,
            },
            timeout=120,
        )
        assert r.status_code == 200, r.text
        assert r.headers["X-Model"] == "gemma-3-270m-q4_k_m.gguf"
        assert r.text.strip()
        assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [
            "gemma-3-270m-q4_k_m.gguf",
            "tiny-a.gguf",
            "tiny-b.gguf",
            "tiny-c.gguf",
        ]
    finally:
        assert stop(process, signal.SIGINT) == 0
    for port in (store_port, worker_port):
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
