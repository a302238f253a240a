"""Hostile and bad input: each gets a 4xx JSON error, nothing is written, serving goes on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from inference_worker.app import create_app as create_worker_app
from inference_worker.config import WorkerSettings
from model_store_server.app import create_app as create_store_app
from model_store_server.config import StoreSettings
from tests.conftest import A, ask, example_counts, worker_status

BAD_NAMES = [
    "../tiny-a.gguf",
    "..",
    "sub/tiny-a.gguf",
    "sub\\tiny-a.gguf",
    "/etc/passwd.gguf",
    "C:\\models\\x.gguf",
    "tiny-a.gguf\x00.txt",
    "tiny-a.bin",
    "tiny-a.gguf.sh",
    "x" * 300 + ".gguf",
    "\u2025\u2215x.gguf",  # two-dot leader + division slash
    "tiny\u200b-a.gguf",  # zero-width space
    "t\u0131ny-a.gguf",  # dotless i look-alike
    ".hidden.gguf",
    "",
]


def post_json(store, payload) -> requests.Response:
    return requests.post(f"{store.url}/user_request", json=payload, timeout=30)


@pytest.mark.parametrize("name", BAD_NAMES)
def test_store_refuses_bad_model_names(worker, start_store, name):
    store = start_store(worker)
    r = post_json(store, {"prompt": "hi", "model": name})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request"
    assert worker_status(worker)["received"]["bytes"] == 0


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"prompt": "", "model": A}, "prompt must not be empty"),
        ({"prompt": "   ", "model": A}, "prompt must not be empty"),
        ({"prompt": "x" * 40000, "model": A}, "the limit is 32768"),
        ({"prompt": "a\x00b", "model": A}, "NUL"),
        ({"prompt": "a\ud800b", "model": A}, "lone surrogates"),
        ({"prompt": "hi", "model": A, "max_tokens": 0}, "positive integer"),
        ({"prompt": "hi", "model": A, "max_tokens": 1.0}, "positive integer"),
        ({"prompt": "hi", "model": A, "max_tokens": None}, "positive integer"),
        ({"prompt": "hi", "model": A, "max_tokens": 10**9}, "N_CTX=2048"),
        ({"prompt": ["hi"], "model": A}, "prompt must be a string"),
        ({"prompt": "hi", "model": {"name": A}}, "model"),
    ],
)
def test_store_refuses_bad_fields(worker, start_store, payload, message):
    store = start_store(worker)
    r = post_json(store, payload)
    assert r.status_code == 400
    assert message in r.json()["error"]["message"]
    assert worker_status(worker)["received"]["bytes"] == 0
    assert ask(store, A).status_code == 200  # still serving


def test_store_refuses_oversized_bodies(worker, start_store):
    store = start_store(worker, max_request_bytes=4096)
    r = requests.post(
        f"{store.url}/user_request",
        data=json.dumps({"prompt": "x" * 5000, "model": A}),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 413
    assert r.json()["error"]["type"] == "request_entity_too_large"
    assert "MAX_REQUEST_BYTES (4096 bytes)" in r.json()["error"]["message"]


@pytest.mark.parametrize("name", BAD_NAMES[:-1])
def test_worker_refuses_bad_names_on_every_endpoint(worker, models_dir, name, tmp_path):
    data = (models_dir / A).read_bytes()
    quoted = requests.utils.quote(name, safe="")
    calls = [
        ("POST", "/load_model_from_store", {"X-Model-Name": name}, data),
        ("POST", "/cache_model", {"X-Model-Name": name}, data),
        ("POST", "/load_model_from_local_store", {"X-Model-Name": name}, None),
    ]
    for method, path, headers, body in calls:
        try:
            r = requests.request(method, f"{worker.url}{path}", headers=headers, data=body)
        except ValueError:  # requests itself refuses a header with NUL or newline
            continue
        assert r.status_code == 400, (path, name)
    r = requests.delete(f"{worker.url}/models/{quoted}", timeout=10)
    assert r.status_code in (400, 404, 405)
    r = requests.post(f"{worker.url}/infer", json={"prompt": "x", "model": name}, timeout=10)
    assert r.status_code == 400
    assert worker_status(worker)["cached"] == []
    written = [p for p in tmp_path.rglob("*") if p.is_file() and "models" not in p.parts]
    assert written == []


# -- fuzzing: never a 5xx, never a file outside the cache directory ----------------------------


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    # Lone surrogates are valid in JSON text but not in UTF-8: generate them too.
    | st.text(st.characters(exclude_categories=()), max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=8,
)
request_bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {},
        optional={
            "prompt": json_values,
            "model": st.one_of(st.sampled_from(BAD_NAMES + ["missing.gguf"]), json_values),
            "max_tokens": json_values,
        },
    ).map(lambda v: json.dumps(v).encode()),
)
names = st.one_of(st.sampled_from(BAD_NAMES), st.text(max_size=40))


@pytest.fixture(scope="module")
def fuzz_apps(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    (root / "models").mkdir()
    worker_app = create_worker_app(
        WorkerSettings(model_cache_dir=root / "cache", worker_host="127.0.0.1")
    )
    store_app = create_store_app(
        StoreSettings(models_dir=root / "models", worker_url="http://127.0.0.1:9")
    )
    return root, worker_app.test_client(), store_app.test_client()


@example_counts(40, 600)
def test_fuzz_store_user_request(fuzz_apps, max_examples):
    root, _, store = fuzz_apps

    @settings(max_examples=max_examples, deadline=None)
    @given(body=request_bodies)
    def check(body):
        before = _tree(root)
        r = store.post("/user_request", data=body, content_type="application/json")
        assert r.status_code < 500 or r.json["error"]["type"] == "worker_unavailable"
        assert r.json["error"]["message"]
        assert _tree(root) == before

    check()


@example_counts(40, 600)
def test_fuzz_worker_names_and_bodies(fuzz_apps, max_examples):
    root, worker, _ = fuzz_apps

    @settings(max_examples=max_examples, deadline=None)
    @given(name=names, body=st.binary(max_size=64))
    def check(name, body):
        before = _tree(root)
        try:
            headers = {"X-Model-Name": name}
            for path in ("/cache_model", "/load_model_from_store", "/load_model_from_local_store"):
                r = worker.post(path, data=body, headers=headers)
                assert r.status_code < 500, (path, name, r.json)
        except ValueError:
            pass  # the test client refuses header values with newlines, like any HTTP client
        r = worker.delete(f"/models/{requests.utils.quote(name, safe='')}")
        assert r.status_code < 500
        r = worker.post("/infer", data=body, content_type="application/json")
        assert r.status_code < 500
        new = _tree(root) - before
        # Only a well-formed upload can add a file, and only inside the cache directory.
        assert all(p.startswith("cache/") for p in new), new

    check()
