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

from model_swap.probes import free_port
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent


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
        [sys.executable, "-m", "model_swap_cli.cli", "tiny-models", str(tmp_path), "--count", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-a.gguf", "tiny-b.gguf"]


def test_tiny_models_rejects_bad_count(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "model_swap_cli.cli", "tiny-models", str(tmp_path), "--count", "0"],
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
@pytest.mark.slow
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


@pytest.mark.slow
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
    process = spawn([sys.executable, "-m", "model_swap_cli.cli", "up"], env)
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


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc), so a test can check none outlives it."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait() is missing


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def up_env(tmp_path, tiny_models_dir) -> dict[str, str]:
    """Settings for ``model-swap up`` on free ports, with tiny models only (a tiny model
    stands in for the default Gemma file, so nothing is assembled)."""
    models = tmp_path / "models"
    models.mkdir()
    for source in tiny_models_dir.iterdir():
        (models / source.name).write_bytes(source.read_bytes())
    (models / "gemma-3-270m-q4_k_m.gguf").write_bytes(
        (tiny_models_dir / "tiny-a.gguf").read_bytes()
    )
    return {
        "MODELS_DIR": str(models),
        "MODEL_CACHE_DIR": str(tmp_path / "cache"),
        "STORE_PORT": str(free_port()),
        "WORKER_PORT": str(free_port()),
        "STORE_HOST": "127.0.0.1",
        "WORKER_HOST": "127.0.0.1",
        "SHUTDOWN_GRACE_SECONDS": "5",
    }


def start_up(env) -> tuple[subprocess.Popen, set[int]]:
    """``model-swap up``, once both services answer; returns it and its service processes."""
    process = spawn([sys.executable, "-m", "model_swap_cli.cli", "up"], env)
    read_until(process, r"model-swap is up", timeout=120)
    r = requests.post(
        f"http://127.0.0.1:{env['STORE_PORT']}/user_request",
        json={"prompt": "hello", "model": "tiny-a.gguf", "max_tokens": 4},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    services = descendants(process.pid)
    assert len(services) == 2  # each service is one process
    return process, services


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
@pytest.mark.slow
def test_stop_signal_to_model_swap_up_leaves_no_process_and_no_port(up_env, sig):
    process, services = start_up(up_env)
    try:
        process.send_signal(sig)
        assert process.wait(timeout=60) == 0
    finally:
        stop(process, signal.SIGKILL)
    assert [pid for pid in services if alive(pid)] == []
    assert not listening(int(up_env["STORE_PORT"]))
    assert not listening(int(up_env["WORKER_PORT"]))


@pytest.mark.slow
def test_a_doubled_sigint_to_model_swap_up_still_drains_a_running_stream(up_env):
    """A tool that signals the whole process group while ``uv run`` forwards the signal
    delivers SIGINT twice: the running stream still finishes, then ``up`` exits 0."""
    process, services = start_up({**up_env, "N_CTX": "4096", "SHUTDOWN_GRACE_SECONDS": "60"})
    try:
        response = requests.post(
            f"http://127.0.0.1:{up_env['STORE_PORT']}/user_request",
            json={"prompt": "hello", "model": "tiny-a.gguf", "max_tokens": 3000},
            stream=True,
            timeout=60,
        )
        chunks = response.iter_content(chunk_size=None)
        body = next(chunks)
        process.send_signal(signal.SIGINT)
        time.sleep(0.2)  # two deliveries (one pending signal would absorb the second)
        process.send_signal(signal.SIGINT)
        body += b"".join(chunks)  # raises ChunkedEncodingError if the stream is cut
        assert b"[model-swap error]" not in body
        assert process.wait(timeout=60) == 0
    finally:
        stop(process, signal.SIGKILL)
    output = process.stdout.read()
    assert "repeated; already stopping" in output
    assert "cutting" not in output and "grace of" not in output
    assert [pid for pid in services if alive(pid)] == []


@pytest.mark.slow
def test_services_die_with_a_killed_model_swap_up(up_env):
    process, services = start_up(up_env)
    process.kill()
    process.wait(timeout=10)
    assert wait_for(lambda: not any(alive(pid) for pid in services), timeout=60)
    # A dead service's main thread shows as a zombie while its other threads still tear
    # down (and hold its sockets) for a moment: the ports must close, within seconds.
    assert wait_for(lambda: not listening(int(up_env["STORE_PORT"])), timeout=15)
    assert wait_for(lambda: not listening(int(up_env["WORKER_PORT"])), timeout=15)


def test_model_swap_up_needs_fixed_ports(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "model_swap_cli.cli", "up"],
        env={**os.environ, "WORKER_PORT": "0", "MODELS_DIR": str(tmp_path / "models")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "WORKER_PORT and STORE_PORT must be fixed ports" in result.stderr
    assert not (tmp_path / "models").exists()  # refused before anything was written


@pytest.mark.slow
def test_model_swap_up_with_two_workers_spreads_models_and_survives_one(up_env):
    taken = {int(up_env["STORE_PORT"]), int(up_env["WORKER_PORT"])}
    port = free_port()
    while listening(port + 1) or {port, port + 1} & taken:  # the store's port is chosen too
        port = free_port()
    env = {**up_env, "WORKER_PORT": str(port)}
    process = spawn([sys.executable, "-m", "model_swap_cli.cli", "up", "--workers", "2"], env)
    store = f"http://127.0.0.1:{env['STORE_PORT']}"
    try:
        read_until(process, rf"workers on :{port}, :{port + 1}", timeout=120)

        def ask(model: str) -> requests.Response:
            body = {"prompt": "hello", "model": model, "max_tokens": 4}
            return requests.post(f"{store}/user_request", json=body, timeout=60)

        first = {model: ask(model) for model in ("tiny-a.gguf", "tiny-b.gguf")}
        assert {r.headers["X-Worker"] for r in first.values()} == {
            f"http://127.0.0.1:{port}",
            f"http://127.0.0.1:{port + 1}",
        }
        for model, r in first.items():  # side by side: no swap between them
            again = ask(model)
            assert again.headers["X-Cache-Action"] == "already_loaded"
            assert again.headers["X-Worker"] == r.headers["X-Worker"]
        caches = sorted(p.name for p in Path(env["MODEL_CACHE_DIR"]).iterdir())
        assert caches == ["worker-0", "worker-1"]
        # Kill the worker that serves tiny-a: its traffic moves to the other within seconds.
        victim_port = first["tiny-a.gguf"].headers["X-Worker"].rsplit(":", 1)[1]
        victim = next(
            pid
            for pid in descendants(process.pid)
            if b"inference_worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
            and f"WORKER_PORT={victim_port}\0".encode() in Path(f"/proc/{pid}/environ").read_bytes()
        )
        os.kill(victim, signal.SIGKILL)
        moved = ask("tiny-a.gguf")
        assert moved.status_code == 200, moved.text
        assert moved.headers["X-Worker"] == first["tiny-b.gguf"].headers["X-Worker"]
        read_until(process, r"worker \d exited with code -9", timeout=10)
        assert process.poll() is None  # the store and the other worker keep serving
    finally:
        stop(process, signal.SIGINT)
