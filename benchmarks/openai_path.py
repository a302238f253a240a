"""The OpenAI path's hit latency against ``/user_request`` and against a peer's OpenAI server.

    uv run python benchmarks/openai_path.py            # Gemma 3 270M, 10 rounds (~1 minute)
    uv run python benchmarks/openai_path.py --quick    # a tiny model, 3 rounds

Also a section of ``benchmarks/suite.py``. For one model, already loaded
everywhere, each round measures (streamed, ``max_tokens`` 1, the same user text):

- ``/user_request``: time to the first byte, which is the first token;
- ``/v1/completions`` on the store with the same raw prompt: time to the first
  token's SSE event (same prompt tokens as ``/user_request``, so the difference
  is the OpenAI layer: parsing, the worker's events, SSE framing);
- ``/v1/chat/completions`` on the store: time to the first token's event (the
  role event that precedes it is not counted);
- the worker's own ``/infer`` with that chat request, as the store sends it
  (time to its first byte, the first token's event): what the second hop costs;
- ``/v1/chat/completions`` on llama-cpp-python's own server (``python -m
  llama_cpp.server``) with the same file: time to the first token's event (with
  this file its chat format often ends the turn at the first token, so that
  event is the final one).

Rounds interleave the four in blocks (one call that re-evaluates the path's
prompt, then three measured calls), so machine noise hits all alike and every
path, like the peer, answers with its prompt already in the KV cache; medians
are reported.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    Services,
    median,
    standalone_models,
    start_llama_server,
    stop_process,
    stream_timing,
)

TEXT = "Once upon a time"
BLOCK = 3  # measured calls per path and round, after one that warms the prompt cache


def first_content_seconds(url: str, body: dict) -> float:
    """Seconds from sending ``body`` to the first SSE event that shows a sampled token.

    That is the first event with text, or the final one if the first token ended the
    turn (the role event that opens a chat stream is not counted).
    """
    started = time.perf_counter()
    with requests.post(url, json=body, stream=True, timeout=600) as response:
        response.raise_for_status()
        first = None
        for line in response.iter_lines(chunk_size=None):
            if first is None and line.startswith(b"data: {"):
                choice = (json.loads(line[6:]).get("choices") or [{}])[0]
                text = choice.get("text") or (choice.get("delta") or {}).get("content")
                if text or choice.get("finish_reason"):
                    first = time.perf_counter() - started
        if first is None:
            raise RuntimeError(f"{url} streamed no text")
        return first


def measure(services: Services, tmp: Path, models: Path, model: str, rounds: int) -> dict:
    """Median milliseconds per path, and the prompt sizes each path evaluated."""
    store = services.store_url
    # One token, as in the suite's other hit figures: llama-cpp-python then answers the
    # next identical prompt from its KV cache; after longer answers it re-evaluates the
    # prompt (tens of ms for Gemma here), for the peer as for the worker.
    chat = {"model": model, "messages": [{"role": "user", "content": TEXT}], "max_tokens": 1}
    paths = {
        "user_request": lambda: stream_timing(
            f"{store}/user_request", {"prompt": TEXT, "model": model, "max_tokens": 1}
        )[0],
        "v1_completions": lambda: first_content_seconds(
            f"{store}/v1/completions",
            {"model": model, "prompt": TEXT, "max_tokens": 1, "stream": True},
        ),
        "v1_chat": lambda: first_content_seconds(
            f"{store}/v1/chat/completions", {**chat, "stream": True}
        ),
        # The worker alone, as the store calls it for that chat request: the second hop's cost.
        "worker_chat": lambda: stream_timing(
            f"{services.worker_url}/infer", {**chat, "stream_format": "events"}
        )[0],
    }
    peer, peer_url = start_llama_server(tmp, {model: models / model}, "peer-openai")
    try:
        paths["peer_chat"] = lambda: first_content_seconds(
            f"{peer_url}/v1/chat/completions", {**chat, "stream": True}
        )
        for run in paths.values():  # load everywhere; warm the prompt caches
            run()
            run()
        samples: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(rounds):
            for name, run in paths.items():
                # The first call after another path re-evaluates this path's prompt (the
                # worker has one llama.cpp context and keeps the last prompt's KV cache,
                # as the peer does); the rest measure the hit proper.
                run()
                samples[name] += [run() for _ in range(BLOCK)]
        usage = {
            "ours_chat_prompt_tokens": requests.post(
                f"{store}/v1/chat/completions", json=chat, timeout=600
            ).json()["usage"]["prompt_tokens"],
            "peer_chat_prompt_tokens": requests.post(
                f"{peer_url}/v1/chat/completions", json=chat, timeout=600
            ).json()["usage"]["prompt_tokens"],
        }
    finally:
        stop_process(peer)
    return {name: median(values) * 1000 for name, values in samples.items()} | usage


def rows(model: str, result: dict) -> list[list[str]]:
    base, peer = result["user_request"], result["peer_chat"]

    def row(label: str, value: float, baseline: float, target: str, ok: bool) -> list[str]:
        verdict = "met" if ok else "not met"
        return [
            model,
            label,
            f"{value:.2f} ms",
            f"{baseline:.2f} ms",
            f"{value - baseline:+.2f} ms",
            f"{target}: {verdict}",
        ]

    completions = result["v1_completions"]
    chat = result["v1_chat"]
    return [
        row(
            "/v1/completions vs /user_request",
            completions,
            base,
            "<= +2 ms",
            completions - base <= 2,
        ),
        row("/v1/chat/completions vs /user_request", chat, base, "<= +2 ms", chat - base <= 2),
        row(
            "/v1/chat/completions vs llama-cpp-python server", chat, peer, "<= +0 ms", chat <= peer
        ),
    ]


NOTE = (
    "Streamed hits (the model already loaded everywhere), max_tokens=1, time to the first "
    "generated text. Prompt tokens of the chat request: model-swap {ours}, llama-cpp-python's "
    "server {peer} (each renders the chat with its own fallback format when the file has no "
    "template). `/v1/completions` sends the same raw prompt as `/user_request`. The worker's "
    "own /infer answered the store's chat request in {worker:.2f} ms: the store's hop costs "
    "the difference."
)


def bench_openai(report, args, tmp: Path, models: Path, services: Services, model: str) -> None:
    """The suite's section: OpenAI hit TTFB against /user_request and the peer."""
    result = measure(services, tmp, models, model, max(args.repeats * 2, 1))
    report.table(
        "7. OpenAI API hit latency",
        ["model", "comparison", "model-swap", "baseline", "difference", "target"],
        rows(model, result),
        NOTE.format(
            ours=result["ours_chat_prompt_tokens"],
            peer=result["peer_chat_prompt_tokens"],
            worker=result["worker_chat"],
        ),
    )
    report.data["openai"] = result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model and 3 rounds")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="model-swap-openai-") as name:
        tmp = Path(name)
        models, model = standalone_models(tmp, args.quick)
        rounds = 3 if args.quick else args.rounds
        services = Services(tmp, models, CACHE_POLICY="lru", MAX_CACHE_SIZE="2")
        try:
            result = measure(services, tmp, models, model, rounds)
        finally:
            services.stop()
    header = ["model", "comparison", "model-swap", "baseline", "difference", "target"]
    print(f"medians of {rounds * BLOCK} calls per path")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for line in rows(model, result):
        print("| " + " | ".join(line) + " |")
    print(
        NOTE.format(
            ours=result["ours_chat_prompt_tokens"],
            peer=result["peer_chat_prompt_tokens"],
            worker=result["worker_chat"],
        )
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
