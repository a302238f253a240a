"""Replay a trace against a live store and measure what its policy does.

Requests go to ``/user_request`` at the trace's pace divided by ``speed``
(``max_tokens`` from the trace's column, else a default), from ``concurrency``
clients. Each answer's ``X-Cache-Action`` and ``X-Evicted`` headers give the
action counts; the time to the first byte (TTFB) gives the waits: a
request's swap time is its TTFB minus the median TTFB of the requests that
were already loaded (the same prompt work without a swap). The result has the
simulator's keys (``report.summarize``) plus ``ttfb_p50_ms``/``ttfb_p95_ms``,
``cold_starts`` (answers other than ``already_loaded``) and, from the store's
``/metrics`` before and after, ``prewarm_loads``, ``prewarm_hits`` and
``prewarm_wasted`` (0 with PREWARM=off).

A request that fails on the network (connection reset, broken stream, no
answer within ``timeout`` seconds) is recorded with status 0 and counted under
``errors`` (as is any other answer that is neither 200 nor a refusal); the
replay goes on. A 400 ``model_too_large`` (a model larger than a byte budget on
its own) counts as ``rejected``, as in the simulator, so in a replay without
errors ``requests`` is the sum of the four action counts.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import requests as http

from model_store_server.decision import Action
from model_swap_lab.report import percentile, summarize
from model_swap_lab.trace import Request

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 4
DEFAULT_TIMEOUT_S = 600.0
PROMPT = "hello"
NO_ACTION = "none"  # an error, or an answer without X-Cache-Action


@dataclass(frozen=True)
class Answer:
    action: str
    evicted: tuple[str, ...]
    unloaded: tuple[str, ...]
    status: int
    ttfb: float


def _send(session: http.Session, store: str, request: Request, timeout: float) -> Answer:
    """One request; never raises for a network failure (that is status 0)."""
    max_tokens = int(request.extra.get("max_tokens") or DEFAULT_MAX_TOKENS)
    started = time.perf_counter()
    try:
        with session.post(
            f"{store}/user_request",
            json={"prompt": PROMPT, "model": request.model, "max_tokens": max_tokens},
            stream=True,
            timeout=timeout,
        ) as response:
            chunks = response.iter_content(chunk_size=None)
            first = next(chunks, b"")
            ttfb = time.perf_counter() - started
            body = [first] if response.status_code != 200 else []
            for chunk in chunks:
                if response.status_code != 200:
                    body.append(chunk)
                if time.perf_counter() - started > timeout:
                    raise http.Timeout(f"the answer took longer than {timeout:g} s")
    except http.RequestException as err:
        logger.warning("request %d (%s) failed: %s", request.line, request.model, err)
        return Answer(NO_ACTION, (), (), 0, time.perf_counter() - started)
    headers = response.headers
    action = headers.get("X-Cache-Action") or _refusal(response.status_code, b"".join(body))

    def names(header: str) -> tuple[str, ...]:
        return tuple(name for name in headers.get(header, "").split(",") if name)

    return Answer(action, names("X-Evicted"), names("X-Unloaded"), response.status_code, ttfb)


def _refusal(status: int, body: bytes) -> str:
    """The action of an answer without X-Cache-Action: a policy's 503 or a model too
    large for a budget (400 ``model_too_large``) is ``rejected``, else no action."""
    if status == 503:
        return str(Action.REJECTED)
    if status == 400:
        try:
            error_type = json.loads(body)["error"]["type"]
        except (ValueError, KeyError, TypeError):
            return NO_ACTION
        if error_type == "model_too_large":
            return str(Action.REJECTED)
    return NO_ACTION


def reset_store(store: str, timeout: float = DEFAULT_TIMEOUT_S) -> list[str]:
    """``POST /reset``: the store evicts every model from the worker; returns their names."""
    answer = http.post(f"{store.rstrip('/')}/reset", timeout=timeout)
    answer.raise_for_status()
    return list(answer.json().get("evicted", []))


def store_sizes(store: str, timeout: float = 30) -> dict[str, int]:
    """The sizes of the store's models, from its ``/v1/models`` list."""
    answer = http.get(f"{store}/v1/models", timeout=timeout)
    answer.raise_for_status()
    return {entry["id"]: int(entry.get("size_bytes") or 0) for entry in answer.json()["data"]}


PREWARM_COUNTERS = ("loads", "hits", "wasted")


def prewarm_counters(store: str, timeout: float = 30) -> dict[str, float]:
    """The store's ``model_swap_prewarm_*_total`` counters (summed over labels; 0 when
    absent: PREWARM=off, or ``/metrics`` not readable without a token)."""
    totals = dict.fromkeys(PREWARM_COUNTERS, 0.0)
    try:
        answer = http.get(f"{store}/metrics", timeout=timeout)
    except http.RequestException:
        return totals
    if answer.status_code != 200:
        return totals
    for line in answer.text.splitlines():
        for key in PREWARM_COUNTERS:
            if line.startswith(f"model_swap_prewarm_{key}_total"):
                totals[key] += float(line.rsplit(" ", 1)[1])
    return totals


def replay(
    trace: Sequence[Request],
    store: str,
    *,
    speed: float = 1.0,
    concurrency: int = 1,
    sizes: dict[str, int] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> dict:
    """Send ``trace`` to the store at ``store`` (a base URL); returns the result object.

    Blocks until every request is answered or has failed. ``speed`` > 1
    replays faster (0: as fast as the answers come). ``timeout``: seconds per
    request: no wait for a connection or for the next bytes lasts longer, and
    an answer still streaming after it is abandoned (an error), so a request
    takes at most about 2 x ``timeout`` and the replay at most the trace's
    duration / ``speed`` plus that per request (divided among ``concurrency``
    clients). ``sizes`` (for ``bytes_pushed``)
    defaults to the store's own list.
    """
    if concurrency < 1 or speed < 0:
        raise ValueError("concurrency must be >= 1 and speed >= 0")
    if not timeout > 0:
        raise ValueError("timeout must be > 0 seconds")
    store = store.rstrip("/")
    sizes = sizes if sizes is not None else store_sizes(store)
    local = threading.local()
    before = prewarm_counters(store)
    started = time.perf_counter()

    def run(request: Request) -> Answer:
        if speed:
            delay = started + request.timestamp / speed - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        if not hasattr(local, "session"):
            local.session = http.Session()
        return _send(local.session, store, request, timeout)

    if concurrency == 1:
        answers = [run(request) for request in trace]
    else:
        with ThreadPoolExecutor(concurrency) as pool:
            answers = list(pool.map(run, trace))
    hits = [a.ttfb for a in answers if a.action == Action.ALREADY_LOADED]
    baseline = percentile(hits, 50)
    waits = [
        0.0 if a.action == Action.ALREADY_LOADED else max(0.0, a.ttfb - baseline)
        for a in answers
        if a.action != Action.REJECTED and a.status == 200
    ]
    pushed = sum(
        sizes.get(request.model, 0)
        for request, a in zip(trace, answers, strict=True)
        if a.action == Action.LOAD_FROM_STORE
    )
    result = summarize(
        [a.action for a in answers],
        evicted=sum(len(a.evicted) for a in answers),
        unloaded=sum(len(a.unloaded) for a in answers),
        bytes_pushed=pushed,
        waits=waits,
    )
    ttfbs = [a.ttfb for a in answers if a.status == 200]
    result["cold_starts"] = sum(1 for a in answers if a.action != Action.ALREADY_LOADED)
    after = prewarm_counters(store)
    for key in PREWARM_COUNTERS:
        result[f"prewarm_{key}"] = int(after[key] - before[key])
    result.update(
        {
            "ttfb_p50_ms": round(percentile(ttfbs, 50) * 1000, 3),
            "ttfb_p95_ms": round(percentile(ttfbs, 95) * 1000, 3),
            "hit_ttfb_ms": round(baseline * 1000, 3),
            "errors": sum(1 for a in answers if a.status != 200 and a.action != Action.REJECTED),
            "wall_seconds": round(time.perf_counter() - started, 3),
        }
    )
    return result
