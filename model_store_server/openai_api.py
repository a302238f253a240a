"""Translation between OpenAI's API shapes and the worker's inference call.

Requests: ``parse_chat`` and ``parse_completion`` check a client's body the
way OpenAI's server does (a 400 naming the field for anything wrong or
unsupported) and build the worker's ``/infer`` job. Responses: the worker
streams newline-delimited JSON events (``{"text"}`` per token, then
``{"finish_reason", "usage"}``); ``sse_stream`` turns them into OpenAI's
Server-Sent Events chunks and ``full_response`` into one JSON answer. The
swap service never sees these shapes, and nothing here does I/O.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from model_swap.errors import ApiError, BadRequest, NotFound, WorkerFailed
from model_swap.generation import parse_messages, parse_sampling
from model_swap.names import InvalidModelName, validate_model_name
from model_swap.requests_json import parse_keep_alive, prompt_text

CHAT = "chat.completion"
COMPLETION = "text_completion"

# Fields that would change the answer in ways this server does not implement: refused
# with a 400 naming the field rather than silently ignored. Each predicate says
# whether the given value asks for the unsupported behaviour.
UNSUPPORTED: dict[str, Callable[[object], bool]] = {
    "n": lambda v: v not in (None, 1),
    "best_of": lambda v: v not in (None, 1),
    "logprobs": lambda v: v not in (None, False),
    "top_logprobs": lambda v: v is not None,
    "echo": lambda v: v not in (None, False),
    "suffix": lambda v: v is not None,
    "logit_bias": lambda v: bool(v),
    "tools": lambda v: bool(v),
    "tool_choice": lambda v: v not in (None, "none"),
    "functions": lambda v: bool(v),
    "function_call": lambda v: v not in (None, "none"),
    "response_format": lambda v: (
        v is not None and not (isinstance(v, dict) and v.get("type") == "text")
    ),
    "modalities": lambda v: v not in (None, ["text"]),
    "audio": lambda v: v is not None,
    "prediction": lambda v: v is not None,
}


@dataclass(frozen=True)
class OpenAIRequest:
    """A checked OpenAI request: which model, the worker's job, how to answer."""

    kind: str  # CHAT or COMPLETION
    model: str
    job: dict
    stream: bool
    include_usage: bool
    keep_alive: float | None = None  # model-swap's extension (Ollama's name and meaning)


def parse_model(body: dict) -> str:
    """``body["model"]``: a model file name; BadRequest if missing, NotFound if invalid."""
    model = body.get("model")
    if model is None or model == "":
        raise BadRequest("model is required", param="model")
    if not isinstance(model, str):
        raise BadRequest("model must be a string", param="model")
    try:
        return validate_model_name(model)
    except InvalidModelName:
        # No file of that name can be in MODELS_DIR: OpenAI answers 404 for unknown models.
        raise NotFound(f"The model `{model}` does not exist", param="model") from None


def _refuse_unsupported(body: dict) -> None:
    for field, asks_for_it in UNSUPPORTED.items():
        if field in body and asks_for_it(body[field]):
            raise BadRequest(f"{field} is not supported by this server", param=field)


def _stream_flags(body: dict) -> tuple[bool, bool]:
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise BadRequest("stream must be a boolean", param="stream")
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not stream:
        raise BadRequest(
            "stream_options is only allowed when stream is true", param="stream_options"
        )
    if not isinstance(options, dict):
        raise BadRequest("stream_options must be an object", param="stream_options")
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise BadRequest(
            "stream_options.include_usage must be a boolean",
            param="stream_options.include_usage",
        )
    return stream, include_usage


def _max_tokens(body: dict, *names: str) -> int | None:
    """The first of ``names`` present (``max_completion_tokens`` wins over ``max_tokens``)."""
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadRequest(f"{name} must be a positive integer", param=name)
        return value
    return None


def _job(body: dict, max_tokens: int | None) -> dict:
    return {
        "max_tokens": max_tokens,
        **parse_sampling(body).to_json(),
        "stream_format": "events",
    }


def parse_chat(body: dict, *, max_prompt_chars: int) -> OpenAIRequest:
    """A ``POST /v1/chat/completions`` body; raises BadRequest or NotFound."""
    model = parse_model(body)
    _refuse_unsupported(body)
    stream, include_usage = _stream_flags(body)
    messages = parse_messages(body.get("messages"), max_chars=max_prompt_chars)
    job = {
        "messages": [m.to_json() for m in messages],
        **_job(body, _max_tokens(body, "max_completion_tokens", "max_tokens")),
    }
    return OpenAIRequest(
        CHAT, model, job, stream, include_usage, parse_keep_alive(body.get("keep_alive"))
    )


def parse_completion(body: dict, *, max_prompt_chars: int) -> OpenAIRequest:
    """A ``POST /v1/completions`` body; raises BadRequest or NotFound."""
    model = parse_model(body)
    _refuse_unsupported(body)
    stream, include_usage = _stream_flags(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise BadRequest(
                "prompt must be a string or a list of exactly one string "
                "(batches and token arrays are not supported)",
                param="prompt",
            )
        prompt = prompt[0]
    prompt = prompt_text({"prompt": prompt}, max_chars=max_prompt_chars)
    job = {"prompt": prompt, **_job(body, _max_tokens(body, "max_tokens"))}
    return OpenAIRequest(
        COMPLETION, model, job, stream, include_usage, parse_keep_alive(body.get("keep_alive"))
    )


# -- the worker's events ----------------------------------------------------------------


@dataclass
class Outcome:
    """How a generation ended, filled in as the events arrive."""

    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Prompt tokens the worker found in kept KV cells (prefix reuse) instead of evaluating.
    cached_tokens: int = 0
    error: dict | None = None

    def usage(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }


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

    def choice(self, text: str | None, finish_reason: str | None, *, role: bool = False) -> dict:
        if self.request.kind == COMPLETION:
            text = text or ""
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        if self.request.stream:
            delta = {} if text is None else {"content": text}
            if role:
                delta = {"role": "assistant", **delta}
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        message = {"role": "assistant", "content": text, "refusal": None}
        return {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}

    def chunk(self, choices: list, usage: dict | None = None) -> bytes:
        obj = "chat.completion.chunk" if self.request.kind == CHAT else COMPLETION
        extra = {"usage": usage} if self.request.include_usage else {}
        data = self._envelope(obj, choices, **extra)
        return b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n"

    def whole(self, text: str, outcome: Outcome) -> dict:
        choice = self.choice(text, outcome.finish_reason)
        return self._envelope(self.request.kind, [choice], usage=outcome.usage())


DONE = b"data: [DONE]\n\n"


def sse_stream(answer: Answer, chunks: Iterable[bytes]) -> Iterator[bytes]:
    """OpenAI's streaming answer: one chunk per token as it arrives, then ``[DONE]``.

    A generation the worker could not finish ends with an ``error`` event
    (the OpenAI SDK raises it as an APIError) and no ``[DONE]``.
    """
    outcome = Outcome()
    if answer.request.kind == CHAT:
        yield answer.chunk([answer.choice("", None, role=True)])
    for text in texts(chunks, outcome):
        yield answer.chunk([answer.choice(text, None)])
    if outcome.error is not None:
        error = {"message": outcome.error.get("message"), "type": "server_error", "param": None}
        error["code"] = outcome.error.get("type")
        yield b"data: " + json.dumps({"error": error}).encode() + b"\n\n"
        return
    yield answer.chunk([answer.choice(None, outcome.finish_reason)])
    if answer.request.include_usage:
        yield answer.chunk([], usage=outcome.usage())
    yield DONE


def full_response(answer: Answer, chunks: Iterable[bytes]) -> dict:
    """OpenAI's non-streaming answer; raises WorkerFailed if the worker broke off."""
    outcome = Outcome()
    text = "".join(texts(chunks, outcome))
    if outcome.error is not None:
        raise WorkerFailed(str(outcome.error.get("message")))
    return answer.whole(text, outcome)
