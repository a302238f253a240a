"""Prefix reuse on one resident model, through the store: time to first token with the
worker's PREFIX_CACHE on and off.

    uv run python benchmarks/prefix_reuse.py                 # Gemma 3 270M
    uv run python benchmarks/prefix_reuse.py --quick         # a tiny model, 1 round
    uv run python benchmarks/prefix_reuse.py --out benchmarks/PREFIX_REUSE.md

Two kinds of traffic, each against a worker (PARALLEL=4, N_CTX=2048) and a store as
separate processes, once with PREFIX_CACHE=0 and once with PREFIX_CACHE=1:

- repeated prompt: a ~300-token prompt (its own per round) sent twice, streamed
  ``/v1/completions``, greedy, 8 tokens; TTFT of the first and of the second send;
- chat: a conversation of ``TURNS`` turns, each adding ~170 tokens of user text and the
  answer (greedy, 48 tokens), streamed ``/v1/chat/completions``; TTFT per turn, and the
  ``cached_tokens`` the answer reports.

TTFT: the request sent to its first text chunk at the client. Medians over ``--rounds``
rounds (each round its own prompts). The machine may be shared: every figure comes with
its baseline (PREFIX_CACHE=0) from the same run.
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

from harness import Services, emit, median, standalone_models  # noqa: E402

TURNS = 6
WORDS = [
    *[
        "river",
        "mountain",
        "lantern",
        "copper",
        "garden",
        "winter",
        "signal",
        "harbor",
        "meadow",
        "pencil",
        "orbit",
    ],
    *["canvas", "thunder", "velvet", "marble", "compass", "ladder", "window", "forest", "engine"],
]


def filler(seed: int, words: int) -> str:
    """``words`` words of text, different per ``seed`` from the first word on."""
    picked = [WORDS[(seed * 7 + i * (seed % 5 + 3)) % len(WORDS)] for i in range(words)]
    return f"Note {seed}: " + " ".join(picked) + "."


def first_text(url: str, body: dict) -> tuple[float, dict]:
    """Seconds to the first non-empty text delta of a streamed OpenAI answer, and its usage."""
    started = time.perf_counter()
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    first, usage, text = None, {}, []
    with requests.post(url, json=body, stream=True, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                usage = event["usage"]
            for choice in event.get("choices", []):
                piece = choice.get("text") or (choice.get("delta") or {}).get("content") or ""
                if piece and first is None:
                    first = time.perf_counter() - started
                text.append(piece)
    return first or 0.0, {**usage, "text": "".join(text)}


def repeated(store: str, model: str, seed: int, words: int) -> tuple[float, float, int, int]:
    body = {"model": model, "prompt": filler(seed, words), "max_tokens": 8, "temperature": 0}
    cold, usage = first_text(f"{store}/v1/completions", body)
    hit, again = first_text(f"{store}/v1/completions", body)
    cached = (again.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return cold, hit, usage.get("prompt_tokens", 0), cached


def chat(store: str, model: str, seed: int, words: int) -> list[tuple[float, int, int]]:
    messages = [{"role": "system", "content": "You are a helpful assistant."}]
    turns = []
    for turn in range(TURNS):
        messages.append({"role": "user", "content": filler(seed * 100 + turn, words)})
        body = {"model": model, "messages": messages, "max_tokens": 48, "temperature": 0}
        ttft, usage = first_text(f"{store}/v1/chat/completions", body)
        messages.append({"role": "assistant", "content": usage["text"]})
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        turns.append((ttft, usage.get("prompt_tokens", 0), cached))
    return turns


def measure(tmp: Path, models: Path, model: str, reuse: bool, args) -> dict:
    (tmp / f"reuse-{int(reuse)}").mkdir()
    services = Services(
        tmp / f"reuse-{int(reuse)}", models, PARALLEL="4", N_CTX="2048",
        PREFIX_CACHE=str(int(reuse)),
    )  # fmt: skip
    try:
        first_text(f"{services.store_url}/v1/completions", {"model": model, "prompt": "hi"})
        rounds = range(args.rounds + 1)  # round 0: warm-up, not counted
        reps = [repeated(services.store_url, model, 10 + r, args.prompt_words) for r in rounds]
        chats = [chat(services.store_url, model, 20 + r, args.turn_words) for r in rounds]
        return {"repeated": reps[1:], "chat": chats[1:]}
    finally:
        services.stop()


def report(off: dict, on: dict, model: str, rounds: int) -> str:
    def ms(value: float) -> str:
        return f"{value * 1000:.0f}"

    lines = [
        "# Prefix reuse: time to first token with PREFIX_CACHE off and on",
        "",
        f"`benchmarks/prefix_reuse.py`, {model}, worker PARALLEL=4 N_CTX=2048, through the "
        f"store; medians over {rounds} rounds. The machine may have been shared.",
        "",
        "## The same prompt twice (streamed /v1/completions, greedy, 8 tokens)",
        "",
        "| PREFIX_CACHE | prompt tokens | first send TTFT ms | second send TTFT ms | "
        "second / first | cached_tokens (2nd) |",
        "|---|---|---|---|---|---|",
    ]
    for name, data in (("0", off), ("1", on)):
        cold = median([r[0] for r in data["repeated"]])
        hit = median([r[1] for r in data["repeated"]])
        tokens = median([r[2] for r in data["repeated"]])
        cached = median([r[3] for r in data["repeated"]])
        lines.append(
            f"| {name} | {tokens:.0f} | {ms(cold)} | {ms(hit)} | {hit / cold:.2f}x | {cached:.0f} |"
        )
    lines += [
        "",
        f"## A {TURNS}-turn chat (streamed /v1/chat/completions, greedy, 48 tokens a turn)",
        "",
        "| turn | prompt tokens | TTFT ms, PREFIX_CACHE=0 | TTFT ms, PREFIX_CACHE=1 | "
        "on / off | cached_tokens |",
        "|---|---|---|---|---|---|",
    ]
    for turn in range(TURNS):
        a = median([c[turn][0] for c in off["chat"]])
        b = median([c[turn][0] for c in on["chat"]])
        tokens = median([c[turn][1] for c in on["chat"]])
        cached = median([c[turn][2] for c in on["chat"]])
        lines.append(
            f"| {turn + 1} | {tokens:.0f} | {ms(a)} | {ms(b)} | {b / a:.2f}x | {cached:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model, 1 round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompt-words", type=int, default=240, help="~300 tokens on Gemma")
    parser.add_argument("--turn-words", type=int, default=130, help="~170 tokens on Gemma")
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.prompt_words, args.turn_words = 1, 30, 20
    with tempfile.TemporaryDirectory(prefix="prefix-reuse-") as tmp:
        tmp = Path(tmp)
        models, model = standalone_models(tmp, args.quick)
        off = measure(tmp, models, model, False, args)
        on = measure(tmp, models, model, True, args)
    return emit(report(off, on, model, args.rounds), args.out)


if __name__ == "__main__":
    raise SystemExit(main())
