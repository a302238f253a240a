"""``model-swap ps`` and ``model-swap status`` against a real store and worker, and
``LOG_FORMAT=json``."""

from __future__ import annotations

import io
import json
import logging
from contextlib import redirect_stdout

import requests

from model_swap.logs import CONSOLE, JsonFormatter
from model_swap_cli.cli import build_parser
from tests.conftest import A, B, C, ask


def main(argv: list[str]) -> int:
    """``model-swap`` without its logging set-up (which would change this process's)."""
    args = build_parser().parse_args(argv)
    return args.func(args)


def run_cli(*argv) -> tuple[int, str]:
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


def test_ps_prints_one_row_per_model_with_state_and_requests(worker, start_store):
    store = start_store(worker, cache_policy="lru", max_cache_size=2)
    for model in (A, A, B):
        assert ask(store, model).status_code == 200
    assert requests.put(f"{store.url}/models/{B}/pin", timeout=30).status_code == 200
    code, out = run_cli("ps", "--store", store.url)
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].split() == [
        "NAME",
        "STATE",
        "SIZE",
        "IDLE",
        "PINNED",
        "REQUESTS",
        "KEPT",
        "REUSED",
        "LAST",
        "SWAP",
    ]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows[B][1] == "resident" and rows[B][5] == "yes" and rows[B][6] == "1"
    assert rows[A][1] == "cached" and rows[A][6] == "2" and rows[A][-1] == "ago"
    assert rows[C][1] == "available" and rows[C][6] == "0" and rows[C][-1] == "-"
    code, out = run_cli("ps", "--store", store.url, "--json")
    data = {row["name"]: row for row in json.loads(out)}
    assert data[A]["requests_served"] == 2 and data[A]["state"] == "cached"
    assert data[B]["pinned"] is True and data[B]["last_swap"]
    assert data[B]["kv"]["kept_prompts"] == 0 and data[A]["kv"] is None


def test_ps_and_status_show_kept_prompts_and_reused_tokens(worker, start_store):
    store = start_store(worker)
    prompt = "Once upon a time in a land far away there lived a curious fox who"
    for _ in range(2):  # the second send reuses the first one's cells
        assert ask(store, A, prompt=prompt).status_code == 200
    data = {
        row["name"]: row for row in json.loads(run_cli("ps", "--store", store.url, "--json")[1])
    }
    assert data[A]["kv"]["reused_tokens"] > 0
    code, out = run_cli("ps", "--store", store.url)
    row = next(line for line in out.splitlines() if line.startswith(A))
    assert f"{data[A]['kv']['reused_tokens']} tok" in row
    code, out = run_cli("status", "--store", store.url)
    assert "prompt tokens reused" in out and "on disk" in out


def test_status_shows_policy_budgets_worker_and_swaps(worker, start_store):
    store = start_store(worker, cache_policy="lru", max_cache_size=2)
    for model in (A, B, C):
        assert ask(store, model).status_code == 200
    code, out = run_cli("status", "--store", store.url)
    assert code == 0, out
    assert "policy    lru" in out
    assert f"worker    {worker.url} reachable" in out
    assert "cache    2/2 models" in out
    assert f"-{A} (capacity)" in out
    info = json.loads(run_cli("status", "--store", store.url, "--json")[1])
    assert [swap["model"] for swap in info["recent_swaps"]] == [A, B, C]
    assert info["worker"]["reachable"] is True


def test_status_says_when_the_worker_is_unreachable(start_store):
    store = start_store(None, worker_url="http://127.0.0.1:9", worker_connect_timeout=0.5)
    code, out = run_cli("status", "--store", store.url)
    assert code == 0
    assert "UNREACHABLE" in out


def test_ps_without_a_store_fails_with_one_line(capsys):
    assert main(["ps", "--store", "http://127.0.0.1:9"]) == 1
    assert "cannot reach the store" in capsys.readouterr().err


def test_json_log_lines_carry_the_request_id(worker, start_store):
    store = start_store(worker)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    CONSOLE.addHandler(handler)
    level = CONSOLE.level
    CONSOLE.setLevel(logging.INFO)
    try:
        r = ask(store, A, headers={"X-Request-Id": "req-123"})
    finally:
        CONSOLE.setLevel(level)
        CONSOLE.removeHandler(handler)
    assert r.status_code == 200
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    seed_line = next(line for line in lines if line["message"].startswith("[/user_request]"))
    assert seed_line["request_id"] == "req-123"
    assert seed_line["level"] == "INFO" and seed_line["logger"] == "model_swap.console"
