"""Settings: the seed's defaults, env overrides, and one clear line per bad value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from inference_worker.config import WorkerSettings
from model_store_server.config import StoreSettings
from model_swap.settings import SettingsError


def test_store_defaults_are_the_seeds():
    s = StoreSettings.from_env({})
    assert s.models_dir == Path("./models")
    assert s.worker_url == "http://localhost:8080"
    assert s.max_cache_size == 2
    assert s.ttl_seconds == 5
    assert s.cache_policy == "lru"
    assert s.transport == "auto"
    assert s.allow_fallback is False
    assert s.worker_rdma_host == "localhost"
    assert s.worker_rdma_port == 8081
    assert s.store_host == "127.0.0.1"
    assert s.store_port == 8000


def test_residency_settings():
    s = StoreSettings.from_env({})
    assert (s.max_loaded_models, s.max_loaded_bytes, s.max_cache_bytes) == (1, 0, 0)
    assert s.preload_models == () and not s.residency_configured
    s = StoreSettings.from_env(
        {
            "MAX_LOADED_MODELS": "3",
            "MAX_LOADED_BYTES": "1.5G",
            "MAX_CACHE_BYTES": "512MiB",
            "PRELOAD_MODELS": " a.gguf, b.gguf ,a.gguf",
        }
    )
    assert s.max_loaded_bytes == 1536 * 1024**2 and s.max_cache_bytes == 512 * 1024**2
    assert s.preload_models == ("a.gguf", "b.gguf")
    assert s.cache_capacity == 3  # MAX_CACHE_SIZE 2 raised to MAX_LOADED_MODELS
    assert s.residency_configured
    assert StoreSettings.from_env({"MAX_CACHE_BYTES": "1000"}).max_cache_bytes == 1000


def test_worker_defaults():
    w = WorkerSettings.from_env({})
    assert w.worker_host == "127.0.0.1"
    assert w.worker_port == 8080
    assert w.model_cache_dir.parts[-2:] == ("inference_worker", "model_cache")
    assert w.n_gpu_layers == -1
    assert w.n_ctx == 2048


def test_every_store_setting_is_overridable():
    s = StoreSettings.from_env(
        {
            "MODELS_DIR": "/srv/models",
            "WORKER_URL": "http://gpu-box:9000/",
            "MAX_CACHE_SIZE": "3",
            "TTL_SECONDS": "0.5",
            "CACHE_POLICY": "lru-ttl",
            "ALLOW_FALLBACK": "1",
            "WORKER_RDMA_HOST": "gpu-box",
            "WORKER_RDMA_PORT": "9001",
            "STORE_HOST": "127.0.0.1",
            "STORE_PORT": "9002",
        }
    )
    assert s.models_dir == Path("/srv/models")
    assert s.worker_url == "http://gpu-box:9000"
    assert (s.max_cache_size, s.ttl_seconds, s.cache_policy) == (3, 0.5, "lru-ttl")
    assert s.allow_fallback is True
    assert (s.worker_rdma_host, s.worker_rdma_port) == ("gpu-box", 9001)
    assert (s.store_host, s.store_port) == ("127.0.0.1", 9002)


def test_scheduler_settings():
    assert (StoreSettings().scheduler_max_wait, StoreSettings().worker_pool_size) == (2.0, 8)
    s = StoreSettings.from_env({"SCHEDULER_MAX_WAIT": "0", "WORKER_POOL_SIZE": "0"})
    assert (s.scheduler_max_wait, s.worker_pool_size) == (0.0, 0)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"CACHE_POLICY": "fifo"},
            "CACHE_POLICY: 'fifo' is not valid (valid: lru, no-evict, ttl, lru-ttl, gdsf, "
            "lfu-da, gdsf-aged, adaptive)",
        ),
        ({"MAX_CACHE_SIZE": "-1"}, "MAX_CACHE_SIZE: -1 is too small (valid: an integer >= 1)"),
        ({"MAX_CACHE_SIZE": "0"}, "MAX_CACHE_SIZE: 0 is too small"),
        ({"MAX_CACHE_SIZE": "two"}, "MAX_CACHE_SIZE: 'two' is not an integer"),
        ({"TTL_SECONDS": "-5"}, "TTL_SECONDS: -5 is not valid (valid: a number > 0)"),
        ({"FREQ_HALF_LIFE": "0"}, "FREQ_HALF_LIFE: 0 is not valid (valid: a number > 0)"),
        ({"TTL_SECONDS": "nan"}, "TTL_SECONDS: 'nan' is not a finite number"),
        ({"WORKER_URL": "localhost:8080"}, "WORKER_URL: 'localhost:8080' is not valid"),
        ({"WORKER_URL": "http://:80"}, "WORKER_URL"),
        ({"WORKER_URL": "http://proxy/worker"}, "must not have a path"),
        (
            {"WORKER_URL": "http://host:99999"},
            "WORKER_URL: 'http://host:99999' has an invalid port",
        ),
        ({"STORE_PORT": "70000"}, "STORE_PORT: 70000 is not a port (valid: 0-65535)"),
        ({"ALLOW_FALLBACK": "maybe"}, "ALLOW_FALLBACK: 'maybe' is not valid (valid: 0 or 1)"),
        ({"TRANSPORT": "carrier-pigeon"}, "TRANSPORT: 'carrier-pigeon' is not valid"),
        ({"MAX_LOADED_MODELS": "0"}, "MAX_LOADED_MODELS: 0 is too small"),
        ({"MAX_LOADED_BYTES": "lots"}, "MAX_LOADED_BYTES: 'lots' is not a size"),
        ({"MAX_CACHE_BYTES": "-1G"}, "MAX_CACHE_BYTES: '-1G' is not a size"),
        ({"PRELOAD_MODELS": "a.gguf,../b.gguf"}, "PRELOAD_MODELS: '../b.gguf'"),
        (
            {"PRELOAD_MODELS": "a.gguf,b.gguf"},
            "PRELOAD_MODELS: 2 models, but MAX_LOADED_MODELS=1",
        ),
        (
            {"SCHEDULER_MAX_WAIT": "-1"},
            "SCHEDULER_MAX_WAIT: -1 is not valid (valid: a number >= 0)",
        ),
        ({"WORKER_POOL_SIZE": "-1"}, "WORKER_POOL_SIZE: -1 is too small"),
    ],
)
def test_bad_store_values_name_the_setting(env, message):
    with pytest.raises(SettingsError) as info:
        StoreSettings.from_env(env)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORKER_PORT": "http"}, "WORKER_PORT: 'http' is not an integer"),
        ({"N_CTX": "8"}, "N_CTX: 8 is too small"),
        ({"N_GPU_LAYERS": "-2"}, "N_GPU_LAYERS: -2 is too small"),
        ({"MODEL_CACHE_DIR": ""}, "MODEL_CACHE_DIR: must not be empty"),
    ],
)
def test_bad_worker_values_name_the_setting(env, message):
    with pytest.raises(SettingsError) as info:
        WorkerSettings.from_env(env)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("module", "env"),
    [
        ("model_store_server.cli", {"CACHE_POLICY": "random"}),
        ("inference_worker.cli", {"N_CTX": "lots"}),
    ],
)
def test_bad_setting_stops_startup_with_one_line(module, env):
    result = subprocess.run(
        [sys.executable, "-m", module],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert next(iter(env)) in lines[0]


@pytest.mark.parametrize("settings_class", [StoreSettings, WorkerSettings])
def test_serving_settings(settings_class):
    defaults = settings_class.from_env({})
    assert (defaults.server_threads, defaults.shutdown_grace_seconds) == (64, 30.0)
    assert defaults.stream_write_timeout == 60.0
    s = settings_class.from_env(
        {"SERVER_THREADS": "8", "SHUTDOWN_GRACE_SECONDS": "2.5", "STREAM_WRITE_TIMEOUT": "10"}
    )
    assert (s.server_threads, s.shutdown_grace_seconds, s.stream_write_timeout) == (8, 2.5, 10)
    assert (defaults.header_timeout, defaults.keepalive_timeout) == (10.0, 5.0)
    assert (defaults.max_connections, defaults.min_upload_rate) == (4096, 1e6)
    s = settings_class.from_env(
        {
            "HEADER_TIMEOUT": "3",
            "KEEPALIVE_TIMEOUT": "0.5",
            "MAX_CONNECTIONS": "100",
            "MIN_UPLOAD_RATE": "0",
        }
    )
    assert (s.header_timeout, s.keepalive_timeout, s.max_connections, s.min_upload_rate) == (
        3,
        0.5,
        100,
        0,
    )
    assert (defaults.min_download_rate, defaults.max_queued_requests) == (1000, 256)
    s = settings_class.from_env({"MIN_DOWNLOAD_RATE": "0", "MAX_QUEUED_REQUESTS": "8"})
    assert (s.min_download_rate, s.max_queued_requests) == (0, 8)


@pytest.mark.parametrize("settings_class", [StoreSettings, WorkerSettings])
@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SERVER_THREADS", "0"),
        ("SHUTDOWN_GRACE_SECONDS", "0"),
        ("SHUTDOWN_GRACE_SECONDS", "soon"),
        ("SHUTDOWN_GRACE_SECONDS", "inf"),
        ("STREAM_WRITE_TIMEOUT", "-1"),
        ("HEADER_TIMEOUT", "0"),
        ("KEEPALIVE_TIMEOUT", "never"),
        ("MAX_CONNECTIONS", "0"),
        ("MIN_UPLOAD_RATE", "-5"),
        ("MIN_UPLOAD_RATE", "nan"),
        ("MIN_DOWNLOAD_RATE", "-1"),
        ("MAX_QUEUED_REQUESTS", "0"),
    ],
)
def test_bad_serving_setting_is_named(settings_class, name, value):
    with pytest.raises(SettingsError, match=name):
        settings_class.from_env({name: value})
