"""Translation between Ollama's generation and embedding API and the worker's calls.

Requests: ``parse_generate``, ``parse_chat``, ``parse_embed`` and
``parse_legacy_embeddings`` check a body the way Ollama does and build the
worker's ``/infer`` job; a field model-swap cannot honour (images, tools,
``format``, ``system`` or ``template`` on ``/api/generate``, unknown
``options``...) is a 400 naming it, never ignored. A generation with an empty
prompt (no messages) has no job: it loads the model, or unloads it with
``keep_alive`` 0, as Ollama does. Responses: the worker's events become Ollama's
newline-delimited JSON objects (``ndjson``) or one object (``whole``). Nothing
here does I/O.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from model_store_server.embeddings_api import EmbeddingRequest, parse_dimensions, parse_inputs
from model_store_server.ollama_models import model_file, now
from model_store_server.openai_api import Outcome, texts
from model_swap.errors import BadRequest, WorkerFailed
from model_swap.generation import parse_messages, parse_sampling
from model_swap.requests_json import parse_keep_alive, prompt_text

GENERATE, CHAT = "generate", "chat"

# Ollama options model-swap maps onto llama.cpp's sampling (others are refused).
OPTIONS = ("temperature", "top_p", "seed", "num_predict", "stop")
PENALTIES = ("presence_penalty", "frequency_penalty")


def _given(value: object) -> bool:
    return value not in (None, False, "", [], {})


# Top-level fields that ask for something model-swap does not do, per endpoint.
UNSUPPORTED = {
    GENERATE: ("images", "format", "system", "template", "context", "suffix", "think", "logprobs"),
    CHAT: ("tools", "format", "think", "logprobs"),
}


@dataclass(frozen=True)
class OllamaRequest:
    """A checked ``/api/generate`` or ``/api/chat`` body."""

    kind: str  # GENERATE or CHAT
    name: str  # as the client wrote it (echoed in answers)
    model: str  # the store's file
    job: dict | None  # None: only load (or unload) the model
    stream: bool
    keep_alive: float | None


def _refuse(body: dict, fields: Iterable[str], endpoint: str) -> None:
    for field in fields:
        if _given(body.get(field)):
            raise BadRequest(f"{field} is not supported by model-swap's {endpoint}", param=field)


def _stream(body: dict) -> bool:
    value = body.get("stream", True)
    if value is None:
        return True
    if not isinstance(value, bool):
        raise BadRequest("stream must be a boolean", param="stream")
    return value


def parse_options(value: object) -> dict:
    """Ollama's ``options`` as the worker's job fields (max_tokens and sampling)."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise BadRequest("options must be an object", param="options")
    unknown = sorted(set(value) - set(OPTIONS) - set(PENALTIES))
    if unknown:
        raise BadRequest(
            f"option {unknown[0]} is not supported by model-swap "
            f"(supported: {', '.join(OPTIONS + PENALTIES)})",
            param=f"options.{unknown[0]}",
        )
    predict = value.get("num_predict")
    if predict is None or predict in (-1, -2):
        max_tokens = None  # until the model stops or the context is full
    elif isinstance(predict, bool) or not isinstance(predict, int) or predict < 1:
        raise BadRequest(
            "options.num_predict must be a positive integer, -1 or -2", param="num_predict"
        )
    else:
        max_tokens = predict
    sampling = {key: value[key] for key in OPTIONS + PENALTIES if key in value}
    sampling.pop("num_predict", None)
    return {"max_tokens": max_tokens, **parse_sampling(sampling).to_json()}


def parse_generate(body: dict, *, max_prompt_chars: int) -> OllamaRequest:
    """A ``POST /api/generate`` body (the prompt goes to the model as it is, untemplated)."""
    name = body.get("model")
    model = model_file(name)
    _refuse(body, UNSUPPORTED[GENERATE], "/api/generate")
    if body.get("raw") not in (None, True, False):
        raise BadRequest("raw must be a boolean", param="raw")
    prompt = body.get("prompt")
    job = None
    if prompt not in (None, ""):
        prompt = prompt_text({"prompt": prompt}, max_chars=max_prompt_chars)
        job = {"prompt": prompt, **parse_options(body.get("options")), "stream_format": "events"}
    else:
        parse_options(body.get("options"))
    keep_alive = parse_keep_alive(body.get("keep_alive"))
    return OllamaRequest(GENERATE, name, model, job, _stream(body), keep_alive)


def parse_chat(body: dict, *, max_prompt_chars: int) -> OllamaRequest:
    """A ``POST /api/chat`` body (rendered with the model's chat template on the worker)."""
    name = body.get("model")
    model = model_file(name)
    _refuse(body, UNSUPPORTED[CHAT], "/api/chat")
    messages = body.get("messages")
    job = None
    options = parse_options(body.get("options"))
    if messages not in (None, []):
        if isinstance(messages, list):
            for index, message in enumerate(messages):
                if isinstance(message, dict):
                    for field in ("images", "tool_calls", "thinking"):
                        if _given(message.get(field)):
                            raise BadRequest(
                                f"messages[{index}].{field} is not supported by model-swap",
                                param=f"messages[{index}].{field}",
                            )
        checked = parse_messages(messages, max_chars=max_prompt_chars)
        job = {
            "messages": [m.to_json() for m in checked],
            **options,
            "stream_format": "events",
        }
    keep_alive = parse_keep_alive(body.get("keep_alive"))
    return OllamaRequest(CHAT, name, model, job, _stream(body), keep_alive)


def _embedding_options(body: dict) -> None:
    options = body.get("options")
    if options not in (None, {}):
        raise BadRequest("options are not supported for embeddings by model-swap", param="options")


def parse_embed(body: dict, *, max_prompt_chars: int) -> EmbeddingRequest:
    """A ``POST /api/embed`` body: ``input`` a string or a list of strings."""
    model = model_file(body.get("model"))
    _embedding_options(body)
    if body.get("truncate") not in (None, True, False):
        raise BadRequest("truncate must be a boolean", param="truncate")
    inputs = parse_inputs(body.get("input"), "input", max_chars=max_prompt_chars)
    keep_alive = parse_keep_alive(body.get("keep_alive"))
    return EmbeddingRequest(model, inputs, "float", parse_dimensions(body), keep_alive)


def parse_legacy_embeddings(body: dict, *, max_prompt_chars: int) -> EmbeddingRequest:
    """A ``POST /api/embeddings`` body (Ollama's older endpoint): one ``prompt``."""
    model = model_file(body.get("model"))
    _embedding_options(body)
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string", param="prompt")
    inputs = parse_inputs(prompt, "prompt", max_chars=max_prompt_chars)
    return EmbeddingRequest(model, inputs, "float", None, parse_keep_alive(body.get("keep_alive")))


# -- answers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """When the request started and when its model was ready (``time.perf_counter_ns``)."""

    started: int
    ready: int

    def durations(self) -> dict:
        return {
            "total_duration": time.perf_counter_ns() - self.started,
            "load_duration": self.ready - self.started,
        }


def _piece(request: OllamaRequest, text: str, done: bool) -> dict:
    body: dict = {"model": request.name, "created_at": now()}
    if request.kind == CHAT:
        body["message"] = {"role": "assistant", "content": text}
    else:
        body["response"] = text
    body["done"] = done
    return body


def final(request: OllamaRequest, done_reason: str, text: str = "", **extra) -> dict:
    """The object that ends an answer (the whole answer with ``stream: false``)."""
    return {**_piece(request, text, True), "done_reason": done_reason, **extra}


def _line(data: dict) -> bytes:
    return json.dumps(data, ensure_ascii=False).encode() + b"\n"


def _stats(outcome: Outcome, timing: Timing) -> dict:
    return {
        **timing.durations(),
        # Only the prompt tokens evaluated: those found in kept KV cells cost nothing.
        "prompt_eval_count": outcome.prompt_tokens - outcome.cached_tokens,
        "eval_count": outcome.completion_tokens,
    }


def ndjson(request: OllamaRequest, chunks: Iterable[bytes], timing: Timing) -> Iterator[bytes]:
    """Ollama's stream: one object per token, then the ``done`` object with its stats;
    a generation the worker broke off ends with an ``{"error"}`` object."""
    outcome = Outcome()
    for text in texts(chunks, outcome):
        yield _line(_piece(request, text, False))
    if outcome.error is not None:
        yield _line({"error": str(outcome.error.get("message"))})
        return
    yield _line(final(request, outcome.finish_reason or "stop", **_stats(outcome, timing)))


def whole(request: OllamaRequest, chunks: Iterable[bytes], timing: Timing) -> dict:
    """The answer with ``stream: false``; raises WorkerFailed if the worker broke off."""
    outcome = Outcome()
    text = "".join(texts(chunks, outcome))
    if outcome.error is not None:
        raise WorkerFailed(str(outcome.error.get("message")))
    return final(request, outcome.finish_reason or "stop", text, **_stats(outcome, timing))
