"""OpenAI's requests as the worker's inference call.

``parse_chat`` and ``parse_completion`` check a client's body the way OpenAI's
server does (a 400 naming the field for anything wrong or unsupported; fields
that change nothing about the text are ignored with a log line) and build the
worker's ``/infer`` job: sampling, ``response_format`` as a JSON Schema for the
worker's grammar, tools, token-array prompts. ``openai_answers`` formats the
answers. The swap service never sees these shapes, and nothing here does I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from model_swap.errors import BadRequest, NotFound
from model_swap.generation import parse_grammar, parse_messages, parse_sampling
from model_swap.json_schema import check_schema
from model_swap.names import InvalidModelName, resolve_alias
from model_swap.requests_json import parse_keep_alive, prompt_text
from model_swap.tool_calls import (
    AUTO,
    NONE,
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
