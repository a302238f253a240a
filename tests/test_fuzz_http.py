"""Hostile bytes against both services' front server (benchmarks/fuzz.py's strategies):
each input gets a 4xx (or a valid answer, or a closed connection), never a 500, and a
fresh connection afterwards gets its answer. A few seconds in the fast suite (hundreds of
cases under ``-m slow``); run ``benchmarks/fuzz.py`` for thousands of cases."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings

from benchmarks.fuzz import request_bytes, services, still_serving, try_case
from model_swap.tiny_models import write_tiny_models
from tests.conftest import example_counts


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    models = tmp_path_factory.mktemp("fuzz-models")
    write_tiny_models(models, count=2)
    with services(models, tmp_path_factory.mktemp("fuzz-cache")) as started:
        yield started


def _fuzz_case(server, data: bytes) -> None:
    try_case(server.port, data)
    still_serving(server.port)
    assert server.server.loop_restarts == 0


ISSUE_CASES = [
    b"POST /user_request HTTP/1.1\r\nHost: x\r\nContent-Length: \xb2\r\n\r\n",
    b"POST /user_request HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",
    b"POST /user_request HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\xb2\r\nabc\r\n0\r\n\r\n",
    b"POST /infer HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + b"f" * 300 + b"\r\n",
    b"GET /health HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx",
]


@pytest.mark.parametrize("service", ["store", "worker"])
@example_counts(40, 400)  # per service
def test_fuzzed_requests_never_silence_a_service(running, service, max_examples):
    server = running[service]

    @settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(data=request_bytes())
    def run(data: bytes) -> None:
        _fuzz_case(server, data)

    for data in ISSUE_CASES:
        run = example(data=data)(run)
    run()


def test_a_bad_chunked_body_is_a_400_not_a_500(running):
    store = running["store"]
    data = (
        b"POST /user_request HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\nzz\r\n"
    )
    assert try_case(store.port, data) == [400]
    still_serving(store.port)
