"""The worker's generation events, read the same way by the OpenAI and Ollama surfaces.

The worker's ``/infer`` with ``stream_format: events`` streams newline-delimited
JSON: ``{"tool_format"}`` first when tools were offered (how the reply writes
calls), ``{"text"}`` per token, then ``{"finish_reason", "usage"}``; a stream
that broke off ends with ``{"error"}`` (``error_event``, written by the swap
service). ``texts`` yields the text and fills an ``Outcome``. Pure: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from model_swap.errors import ApiError


@dataclass
class Outcome:
    """How a generation ended, filled in as the events arrive."""

    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Prompt tokens the worker found in kept KV cells (prefix reuse) instead of evaluating.
    cached_tokens: int = 0
    error: dict | None = None
    tool_format: str | None = None  # the worker offered tools: how the reply writes calls

    def usage(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }

    def add(self, other: Outcome) -> None:
        """Count ``other``'s tokens too (several prompts in one answer)."""
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens


def error_event(err: ApiError) -> bytes:
    """The event that ends a worker stream that broke off (the swap service's ``stream_error``).

    It starts on a line of its own: the worker may have died in the middle of one.
    """
    body = json.dumps({"error": {"type": err.type, "message": err.message}}).encode()
    return b"\n" + body + b"\n"


def texts(chunks: Iterable[bytes], outcome: Outcome) -> Iterator[str]:
    """The generated text pieces in ``chunks`` (the worker's events), one per token.

    Fills ``outcome`` from the last event; a stream that ends without one, or
    with an error event, sets ``outcome.error``.
    """
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if not line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue  # the rest of a line the worker never finished; an error event follows
            if "text" in event:
                yield event["text"]
            elif "tool_format" in event:
                outcome.tool_format = event["tool_format"]
            elif "error" in event:
                outcome.error = event["error"]
                return
            else:
                outcome.finish_reason = event.get("finish_reason")
                usage = event.get("usage") or {}
                outcome.prompt_tokens = usage.get("prompt_tokens", 0)
                outcome.completion_tokens = usage.get("completion_tokens", 0)
                outcome.cached_tokens = usage.get("cached_tokens", 0)
    if outcome.finish_reason is None and outcome.error is None:
        outcome.error = {"type": "worker_failed", "message": "the worker's stream ended early"}
