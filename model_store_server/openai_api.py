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
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from model_swap.errors import ApiError, BadRequest, NotFound, WorkerFailed
from model_swap.generation import parse_grammar, parse_messages, parse_sampling
from model_swap.json_schema import check_schema
from model_swap.names import InvalidModelName, resolve_alias
from model_swap.requests_json import parse_keep_alive, prompt_text
from model_swap.tool_calls import (
    AUTO,
    NONE,
    Call,
    ReplySplitter,
    parse_reply,
    parse_tool_choice,
    parse_tools,
)

logger = logging.getLogger(__name__)

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
    "functions": lambda v: bool(v),
    "function_call": lambda v: v not in (None, "none"),
    "modalities": lambda v: v not in (None, ["text"]),
    "audio": lambda v: v is not None,
    "prediction": lambda v: v is not None,
}
# Fields that change nothing about the text (billing, storage, hints for OpenAI's own
# serving): accepted, and one log line says they were ignored.
IGNORED = (
    "user",
    "metadata",
    "store",
    "service_tier",
    "reasoning_effort",
    "verbosity",
    "safety_identifier",
    "prompt_cache_key",
    "web_search_options",
)
RESPONSE_FORMATS = ("text", "json_object", "json_schema")


@dataclass(frozen=True)
class OpenAIRequest:
    """A checked OpenAI request: which model, the worker's job, how to answer."""

    kind: str  # CHAT or COMPLETION
    model: str
    job: dict
    stream: bool
    include_usage: bool
    keep_alive: float | None = None  # model-swap's extension (Ollama's name and meaning)
    # Completions with a list of prompts: one job per prompt, answered as choices in order.
    more_jobs: tuple[dict, ...] = field(default=())

    @property
    def jobs(self) -> tuple[dict, ...]:
        return (self.job, *self.more_jobs)


def parse_model(body: dict) -> str:
    """``body["model"]``: a model file name, or its name without ``.gguf`` or with
    ``:latest`` (as Ollama writes it); BadRequest if missing, NotFound if invalid."""
    model = body.get("model")
    if model is None or model == "":
        raise BadRequest("model is required", param="model")
    if not isinstance(model, str):
        raise BadRequest("model must be a string", param="model")
    try:
        return resolve_alias(model)
    except InvalidModelName:
        # No file of that name can be in MODELS_DIR: OpenAI answers 404 for unknown models.
        raise NotFound(f"The model `{model}` does not exist", param="model") from None


def _refuse_unsupported(body: dict) -> None:
    for name, asks_for_it in UNSUPPORTED.items():
        if name in body and asks_for_it(body[name]):
            raise BadRequest(f"{name} is not supported by this server", param=name)
    ignored = [name for name in IGNORED if body.get(name) is not None]
    if ignored:
        logger.info("ignored OpenAI fields model-swap cannot honour: %s", ", ".join(ignored))


def response_format_job(value: object, param: str = "response_format") -> dict:
    """``response_format`` as the worker's job fields: ``json_schema`` for the grammar."""
    if value is None:
        return {}
    if not isinstance(value, dict) or value.get("type") not in RESPONSE_FORMATS:
        raise BadRequest(f"{param}.type must be one of {', '.join(RESPONSE_FORMATS)}", param=param)
    if value["type"] == "text":
        return {}
    if value["type"] == "json_object":
        return {"json_schema": {"type": "object"}}
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise BadRequest(
            f"{param}.json_schema must be an object with a name and a schema", param=param
        )
    schema = spec.get("schema")
    if schema is None:
        schema = {}
    return {"json_schema": check_schema(schema, f"{param}.json_schema.schema")}


def _tools_job(body: dict) -> dict:
    """``tools``, ``tool_choice`` and ``parallel_tool_calls`` as the worker's job fields."""
    tools = parse_tools(body.get("tools"))
    choice = parse_tool_choice(body.get("tool_choice"), tools)
    if not tools or choice == NONE:
        return {}
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise BadRequest("parallel_tool_calls must be a boolean", param="parallel_tool_calls")
    job = {"tools": list(tools), "tool_choice": body.get("tool_choice") or AUTO}
    if parallel is not None:
        job["parallel_tool_calls"] = parallel
    return job


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
        **response_format_job(body.get("response_format")),
        **_tools_job(body),
    }
    if "tools" in job and "json_schema" in job:
        raise BadRequest("response_format cannot be combined with tools", param="response_format")
    return OpenAIRequest(
        CHAT, model, job, stream, include_usage, parse_keep_alive(body.get("keep_alive"))
    )


def parse_completion(body: dict, *, max_prompt_chars: int) -> OpenAIRequest:
    """A ``POST /v1/completions`` body; raises BadRequest or NotFound."""
    model = parse_model(body)
    _refuse_unsupported(body)
    stream, include_usage = _stream_flags(body)
    prompts = _prompts(body.get("prompt"), max_prompt_chars)
    common = {
        **_job(body, _max_tokens(body, "max_tokens")),
        **response_format_job(body.get("response_format")),
    }
    grammar = parse_grammar(body.get("grammar"))
    if grammar is not None and "json_schema" in common:
        raise BadRequest("give either grammar or response_format, not both", param="grammar")
    jobs = tuple({**prompt, **common} for prompt in prompts)
    return OpenAIRequest(
        COMPLETION,
        model,
        jobs[0],
        stream,
        include_usage,
        parse_keep_alive(body.get("keep_alive")),
        jobs[1:],
    )


# The most prompts one completions request may hold (each is one generation in turn).
MAX_PROMPTS = 16


def _is_tokens(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value
    )


def _prompts(value: object, max_chars: int) -> list[dict]:
    """``prompt``: a string, a token array, or a list of either; one job field each."""
    several = isinstance(value, list) and value and not _is_tokens(value)
    items = value if several else [value]
    if len(items) > MAX_PROMPTS:
        raise BadRequest(
            f"prompt holds {len(items)} prompts; the limit is {MAX_PROMPTS}", param="prompt"
        )
    prompts = []
    for item in items:
        if _is_tokens(item):
            if not item:
                raise BadRequest("a token array prompt must not be empty", param="prompt")
            if len(item) > max_chars:
                raise BadRequest(
                    f"prompt is {len(item)} tokens; the limit is {max_chars}", param="prompt"
                )
            prompts.append({"prompt_tokens": list(item)})
        elif isinstance(item, str):
            prompts.append({"prompt": prompt_text({"prompt": item}, max_chars=max_chars)})
        else:
            raise BadRequest(
                "prompt must be a string, a token array, or a list of strings or token arrays",
                param="prompt",
            )
    return prompts


# -- the worker's events ----------------------------------------------------------------


@dataclass
class Outcome:
    """How a generation ended, filled in as the events arrive."""

    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: dict | None = None
    tool_format: str | None = None  # the worker offered tools: how the reply writes calls

    def usage(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
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
    if outcome.finish_reason is None and outcome.error is None:
        outcome.error = {"type": "worker_failed", "message": "the worker's stream ended early"}


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
