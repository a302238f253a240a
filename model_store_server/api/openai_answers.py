"""OpenAI's answers from the worker's events: one JSON object, or Server-Sent Events.

``full_response`` and ``read_choice`` build a whole answer, ``sse_stream`` and
``sse_many`` stream chunks (several prompts of a completions request: one
choice after another). With tools, the reply is read in the format the worker
announced (``model_swap.tool_calls``): content streams as it comes, a call
goes out as one ``tool_calls`` delta once whole, and ``finish_reason`` is
``tool_calls``. Pure: nothing here does I/O.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Iterator

from model_store_server.api.openai import CHAT, COMPLETION, OpenAIRequest
from model_store_server.api.worker_events import Outcome, texts
from model_swap.errors import WorkerFailed
from model_swap.tool_calls import Call, ReplySplitter, parse_reply


def finish_reason(outcome: Outcome, calls: list[Call]) -> str | None:
    return "tool_calls" if calls else outcome.finish_reason


class Answer:
    """The identity of one answer: id, creation time, model and kind."""

    def __init__(self, request: OpenAIRequest, model: str):
        prefix = "chatcmpl" if request.kind == CHAT else "cmpl"
        self.request = request
        self.id = f"{prefix}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.model = model

    def _envelope(self, obj: str, choices: list, **extra) -> dict:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
            **extra,
        }

    def choice(
        self,
        text: str | None,
        finish_reason: str | None,
        *,
        role: bool = False,
        index: int = 0,
        calls: list[Call] | None = None,
    ) -> dict:
        if self.request.kind == COMPLETION:
            text = text or ""
            return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}
        if self.request.stream:
            delta = {} if text is None else {"content": text}
            if role:
                delta = {"role": "assistant", **delta}
            if calls:
                delta["tool_calls"] = [call.openai(i) for i, call in enumerate(calls)]
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        message = {"role": "assistant", "content": text, "refusal": None}
        if calls:
            message["content"] = text or None
            message["tool_calls"] = [
                {k: v for k, v in call.openai(i).items() if k != "index"}
                for i, call in enumerate(calls)
            ]
        return {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}

    def chunk(self, choices: list, usage: dict | None = None) -> bytes:
        obj = "chat.completion.chunk" if self.request.kind == CHAT else COMPLETION
        extra = {"usage": usage} if self.request.include_usage else {}
        data = self._envelope(obj, choices, **extra)
        return b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n"

    def whole(self, choices: list, outcome: Outcome) -> dict:
        return self._envelope(self.request.kind, choices, usage=outcome.usage())


DONE = b"data: [DONE]\n\n"


def _error_chunk(outcome: Outcome) -> bytes:
    error = {"message": outcome.error.get("message"), "type": "server_error", "param": None}
    error["code"] = outcome.error.get("type")
    return b"data: " + json.dumps({"error": error}).encode() + b"\n\n"


def sse_choice(
    answer: Answer, chunks: Iterable[bytes], outcome: Outcome, index: int = 0
) -> Iterator[bytes]:
    """One choice's chunks: one per token as it arrives (a tool call once it is whole),
    then the one with its ``finish_reason``; stops early with ``outcome.error`` set."""
    splitter: ReplySplitter | None = None
    for text in texts(chunks, outcome):
        if outcome.tool_format is not None and answer.request.kind == CHAT:
            splitter = splitter or ReplySplitter(outcome.tool_format)
            text = splitter.push(text)
            if not text:
                continue
        yield answer.chunk([answer.choice(text, None, index=index)])
    if outcome.error is not None:
        return
    calls: list[Call] = []
    if splitter is not None:
        rest, calls = splitter.finish()
        if rest:
            yield answer.chunk([answer.choice(rest, None)])
        if calls:
            yield answer.chunk([answer.choice(None, None, calls=calls)])
    reason = finish_reason(outcome, calls)
    yield answer.chunk([answer.choice(None, reason, index=index)])


def sse_stream(answer: Answer, chunks: Iterable[bytes]) -> Iterator[bytes]:
    """OpenAI's streaming answer: one chunk per token as it arrives, then ``[DONE]``.

    A generation the worker could not finish ends with an ``error`` event
    (the OpenAI SDK raises it as an APIError) and no ``[DONE]``.
    """
    outcome = Outcome()
    if answer.request.kind == CHAT:
        yield answer.chunk([answer.choice("", None, role=True)])
    yield from sse_choice(answer, chunks, outcome)
    if outcome.error is not None:
        yield _error_chunk(outcome)
        return
    if answer.request.include_usage:
        yield answer.chunk([], usage=outcome.usage())
    yield DONE


def sse_many(answer: Answer, streams: Iterable[Iterable[bytes]]) -> Iterator[bytes]:
    """A completions answer to several prompts, streamed one choice after another."""
    total = Outcome()
    for index, chunks in enumerate(streams):
        outcome = Outcome()
        yield from sse_choice(answer, chunks, outcome, index)
        if outcome.error is not None:
            yield _error_chunk(outcome)
            return
        total.add(outcome)
    if answer.request.include_usage:
        yield answer.chunk([], usage=total.usage())
    yield DONE


def read_choice(answer: Answer, chunks: Iterable[bytes], index: int = 0) -> tuple[dict, Outcome]:
    """One whole choice and its outcome; raises WorkerFailed if the worker broke off."""
    outcome = Outcome()
    text = "".join(texts(chunks, outcome))
    if outcome.error is not None:
        raise WorkerFailed(str(outcome.error.get("message")))
    calls: list[Call] = []
    if outcome.tool_format is not None and answer.request.kind == CHAT:
        text, calls = parse_reply(text, outcome.tool_format)
    reason = finish_reason(outcome, calls)
    return answer.choice(text, reason, index=index, calls=calls), outcome


def full_response(answer: Answer, chunks: Iterable[bytes]) -> dict:
    """OpenAI's non-streaming answer; raises WorkerFailed if the worker broke off."""
    choice, outcome = read_choice(answer, chunks)
    return answer.whole([choice], outcome)
