"""Shared fixtures: tiny real GGUF models, and real worker and store servers on free ports."""

from __future__ import annotations

import contextlib
import http.server
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from inference_worker.app import create_app as create_worker_app
from inference_worker.config import WorkerSettings
from model_store_server.app import create_app as create_store_app
from model_store_server.config import StoreSettings
from model_swap.probes import free_port, wait_until_healthy
from model_swap.serving import ServerThread
from model_swap.tiny_models import write_tiny_models

A, B, C = "tiny-a.gguf", "tiny-b.gguf", "tiny-c.gguf"


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def example_counts(fast: int, thorough: int):
    """Parametrize a property test by how many examples Hypothesis draws: ``fast`` in the
    fast suite (``uv run pytest``), ``thorough`` in its twin marked slow (``-m slow``)."""
    return pytest.mark.parametrize(
        "max_examples",
        [
            pytest.param(fast, id=f"{fast}-examples"),
            pytest.param(thorough, id=f"{thorough}-examples", marks=pytest.mark.slow),
        ],
    )


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    """Three tiny models (tiny-a/b/c.gguf), written once per test session."""
    directory = tmp_path_factory.mktemp("tiny-models")
    write_tiny_models(directory, count=3)
    return directory


@pytest.fixture
def models_dir(tiny_models_dir, tmp_path) -> Path:
    """A per-test copy of the tiny models, so a test may add or break files."""
    target = tmp_path / "models"
    shutil.copytree(tiny_models_dir, target)
    return target


@pytest.fixture
def servers() -> Iterator[list[ServerThread]]:
    started: list[ServerThread] = []
    yield started
    for server in reversed(started):
        server.stop()


@pytest.fixture
def start_worker(servers, tmp_path) -> Callable[..., ServerThread]:
    """Start a real worker on 127.0.0.1:0; returns its ServerThread (``.url``, ``.app``)."""

    def start(**overrides) -> ServerThread:
        settings = WorkerSettings(
            worker_host="127.0.0.1",
            worker_port=0,
            model_cache_dir=overrides.pop("model_cache_dir", tmp_path / "worker-cache"),
            **overrides,
        )
        app = create_worker_app(settings)
        server = ServerThread(app).start()
        server.app = app
        servers.append(server)
        return server

    return start


@pytest.fixture
def start_store(servers, models_dir) -> Callable[..., ServerThread]:
    """Start a real store on 127.0.0.1:0 in front of ``worker``; returns its ServerThread."""

    def start(
        worker: ServerThread | None = None, *, clock=None, resolver=None, **overrides
    ) -> ServerThread:
        # Tests push over HTTP unless they ask for another transport: the worker's cache is on
        # this filesystem, so TRANSPORT=auto would place files itself (tests/test_link.py);
        # the smoke scripts and the CLI's tests run the default.
        overrides.setdefault("transport", "http")
        settings = StoreSettings(
            models_dir=overrides.pop("models_dir", models_dir),
            worker_url=overrides.pop("worker_url", worker.url if worker else ""),
            store_host="127.0.0.1",
            store_port=0,
            **overrides,
        )
        app = create_store_app(settings, clock=clock, resolver=resolver)
        server = ServerThread(app).start()
        server.app = app
        servers.append(server)
        return server

    return start


@pytest.fixture
def worker(start_worker) -> ServerThread:
    return start_worker()


def ask(store: ServerThread, model: str, prompt: str = "hello", max_tokens: int = 4, **kw):
    """POST /user_request and read the whole body."""
    return requests.post(
        f"{store.url}/user_request",
        json={"prompt": prompt, "model": model, "max_tokens": max_tokens},
        timeout=60,
        **kw,
    )


def start_generation(store: ServerThread, model: str, max_tokens: int = 1500):
    """Start a long streamed /user_request and return (response, remaining chunks) once
    the first token has arrived, i.e. while ``model`` is generating."""
    response = requests.post(
        f"{store.url}/user_request",
        json={"prompt": "hello", "model": model, "max_tokens": max_tokens},
        stream=True,
        timeout=60,
    )
    chunks = response.iter_content(chunk_size=None)
    first = next(chunks)
    return response, first, chunks


def upload_to_worker(worker, models_dir: Path, name: str, endpoint="/load_model_from_store"):
    """Send ``models_dir/name`` straight to the worker (no store), loading it by default."""
    requests.post(
        f"{worker.url}{endpoint}",
        data=(models_dir / name).read_bytes(),
        headers={"X-Model-Name": name},
        timeout=30,
    ).raise_for_status()


def worker_status(worker: ServerThread) -> dict:
    return requests.get(f"{worker.url}/status", timeout=10).json()


def store_status(store: ServerThread) -> dict:
    return requests.get(f"{store.url}/status", timeout=10).json()


def files_on_disk(worker: ServerThread) -> list[str]:
    directory = Path(worker_status(worker)["model_cache_dir"])
    # Saved prompt states (.kv, inference_worker/kv_disk.py) are not model files.
    return sorted(p.name for p in directory.iterdir() if p.name != ".kv")


def assert_agree(store: ServerThread, worker: ServerThread) -> None:
    """The store's view, the worker's report and the worker's disk all agree."""
    s, w = store_status(store), worker_status(worker)
    store_cached = sorted(entry["name"] for entry in s["cached"])
    worker_cached = sorted(entry["name"] for entry in w["cached"])
    assert store_cached == worker_cached == files_on_disk(worker)
    assert s["loaded"] == w["loaded"]


class ServiceProcess:
    """A service started as a real process (``python -m <module>``), so a test can SIGKILL it."""

    def __init__(
        self, module: str, env: dict[str, str], port_var: str, log_path: Path, preexec=None
    ):
        self.preexec = preexec
        self.module = module
        self.env = env
        self.port = int(env.get(port_var) or free_port())
        self.env[port_var] = str(self.port)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.process = None

    def start(self, timeout: float = 60) -> ServiceProcess:
        import os
        import subprocess
        import sys

        log = open(self.log_path, "a")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module],
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=self.preexec,
        )
        try:
            wait_until_healthy(
                self.url, process=self.process, timeout=timeout, describe=self.module
            )
        except RuntimeError as err:
            raise RuntimeError(f"{err}; log: {self.log_path.read_text()}") from None
        return self

    def kill(self) -> None:
        """SIGKILL: no clean-up code runs."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except Exception:
                self.process.kill()


@pytest.fixture
def processes():
    started: list[ServiceProcess] = []
    yield started
    for process in reversed(started):
        process.stop()


@pytest.fixture
def worker_process(processes, tmp_path) -> Callable[..., ServiceProcess]:
    """Start an inference worker process; call again with ``port=`` to restart it there."""

    def start(
        port: int | None = None, cache_dir: Path | None = None, preexec=None, **env
    ) -> ServiceProcess:
        settings = {
            "WORKER_HOST": "127.0.0.1",
            "WORKER_PORT": str(port or ""),
            "MODEL_CACHE_DIR": str(cache_dir or tmp_path / "worker-cache"),
            **{k: str(v) for k, v in env.items()},
        }
        process = ServiceProcess(
            "inference_worker.cli", settings, "WORKER_PORT", tmp_path / "worker.log", preexec
        )
        processes.append(process)
        return process.start()

    return start


def wait_for(predicate, timeout: float = 30, interval: float = 0.001) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def temp_files(cache: Path) -> list[Path]:
    return list(cache.glob(".*.part")) if cache.exists() else []


def step(store, worker, model, expect_action, expect_evicted=""):
    r = ask(store, model)
    assert r.status_code == 200, r.text
    assert r.headers["X-Cache-Action"] == expect_action
    assert r.headers["X-Evicted"] == expect_evicted
    assert r.headers["X-Model"] == model
    assert r.text
    assert_agree(store, worker)
    return r


def cache_dir(worker):
    from pathlib import Path

    return Path(worker_status(worker)["model_cache_dir"])


@contextlib.contextmanager
def recording_server(body: bytes, content_type: str = "application/json"):
    """A stand-in HTTP server on a free loopback port that answers every POST with 200 and
    ``body`` and records what came: yields (its URL, a list of (path, headers))."""
    seen: list[tuple[str, dict[str, str]]] = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append((self.path, dict(self.headers)))
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
