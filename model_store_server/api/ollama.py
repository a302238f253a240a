"""Translation between Ollama's generation and embedding API and the worker's calls.

Requests: ``parse_generate``, ``parse_chat``, ``parse_embed`` and
``parse_legacy_embeddings`` check a body the way Ollama does and build the
worker's ``/infer`` job. ``format`` (JSON or a JSON Schema) and ``tools`` are
enforced and read as on ``/v1`` (a grammar on the worker, ``model_swap.tool_calls``);
null options are skipped, and options model-swap cannot honour (``num_gpu``,
``use_mmap``...) are ignored with one log line, as Ollama does; a field that would
change the answer and cannot be honoured (images, ``system`` or ``template`` on
``/api/generate``...) is a 400 naming it. A generation with an empty
prompt (no messages) has no job: it loads the model, or unloads it with
``keep_alive`` 0, as Ollama does. Responses: the worker's events become Ollama's
newline-delimited JSON objects (``ndjson``) or one object (``whole``). Nothing
here does I/O.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from model_store_server.api.embeddings import EmbeddingRequest, parse_dimensions, parse_inputs
from model_store_server.api.ollama_models import model_file, now
from model_store_server.api.worker_events import Outcome, texts
from model_swap.errors import BadRequest, WorkerFailed
from model_swap.generation import EXTRA_SAMPLERS, parse_messages, parse_sampling
from model_swap.json_schema import check_schema
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

GENERATE, CHAT = "generate", "chat"

# Ollama options model-swap maps onto llama.cpp's sampling and the request's context.
OPTIONS = (
    "temperature",
    "top_p",
    "seed",
    "num_predict",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    *EXTRA_SAMPLERS,
    "num_ctx",
)
# Options about how Ollama itself loads and runs a model (the worker's settings decide
# these here) or that llama.cpp no longer has: accepted and ignored with a log line, as
# Ollama ignores what it does not know.
IGNORED_OPTIONS = (
    "num_gpu",
    "num_thread",
    "num_batch",
    "num_keep",
    "main_gpu",
    "low_vram",
    "f16_kv",
    "vocab_only",
    "use_mmap",
    "use_mlock",
    "numa",
    "logits_all",
    "embedding_only",
    "penalize_newline",
    "tfs_z",
    "num_gqa",
    "rope_frequency_base",
    "rope_frequency_scale",
)


def _given(value: object) -> bool:
    return value not in (None, False, "", [], {})


# Top-level fields that ask for something model-swap does not do, per endpoint.
UNSUPPORTED = {
    GENERATE: ("images", "system", "template", "context", "suffix", "think", "logprobs"),
    CHAT: ("think", "logprobs"),
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
    """Ollama's ``options`` as the worker's job fields (max_tokens, sampling, num_ctx).

    Null values are left out; options model-swap cannot honour are ignored with one
    log line (Ollama warns about unknown ones the same way).
    """
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise BadRequest("options must be an object", param="options")
    value = {key: item for key, item in value.items() if item is not None}
    ignored = sorted(set(value) - set(OPTIONS))
    if ignored:
        known = [key for key in ignored if key in IGNORED_OPTIONS]
        unknown = [key for key in ignored if key not in IGNORED_OPTIONS]
        logger.info(
            "ignored Ollama options: %s%s",
            ", ".join(known) or "-",
            f" (unknown: {', '.join(unknown)})" if unknown else "",
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
    job: dict = {"max_tokens": max_tokens}
    num_ctx = value.get("num_ctx")
    if num_ctx is not None:
        if isinstance(num_ctx, bool) or not isinstance(num_ctx, int) or num_ctx < 1:
            raise BadRequest("options.num_ctx must be a positive integer", param="num_ctx")
        job["num_ctx"] = num_ctx
    sampling = {key: value[key] for key in OPTIONS if key in value}
    return {**job, **parse_sampling(sampling).to_json()}


NUM_CTX_HEADER = "X-Num-Ctx-Capped"


def context_headers(job: dict | None, n_ctx: int | None) -> dict[str, str]:
    """A header saying so when the request's ``num_ctx`` is above the worker's N_CTX (the
    worker serves at most its own context)."""
    asked = (job or {}).get("num_ctx")
    if asked is None or n_ctx is None or asked <= n_ctx:
        return {}
    return {NUM_CTX_HEADER: f"requested={asked} served={n_ctx} (the worker's N_CTX)"}


def format_job(value: object) -> dict:
    """Ollama's ``format``: ``"json"`` (any JSON object) or a JSON Schema, enforced by a
    grammar on the worker (the job's ``json_schema``)."""
    if value in (None, ""):
        return {}
    if value == "json":
        return {"json_schema": {"type": "object"}}
    if isinstance(value, dict):
        return {"json_schema": check_schema(value, "format")}
    raise BadRequest('format must be "json" or a JSON Schema object', param="format")


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
        job = {
            "prompt": prompt,
            **parse_options(body.get("options")),
            **format_job(body.get("format")),
            "stream_format": "events",
        }
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
    options = {**parse_options(body.get("options")), **format_job(body.get("format"))}
    tools = parse_tools(body.get("tools"))
    # tool_choice is model-swap's extension here (Ollama has none): OpenAI's values.
    choice = parse_tool_choice(body.get("tool_choice"), tools)
    if tools and choice != NONE:
        options["tools"] = list(tools)
        options["tool_choice"] = body.get("tool_choice") or AUTO
        if "json_schema" in options:
            raise BadRequest("format cannot be combined with tools", param="format")
    if messages not in (None, []):
        if isinstance(messages, list):
            for index, message in enumerate(messages):
                if isinstance(message, dict):
                    for field in ("images", "thinking"):
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
    """Embeddings take no options: any given are ignored with a log line (null ones, as
    LangChain's OllamaEmbeddings sends them, silently)."""
    options = body.get("options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("options must be an object", param="options")
    given = sorted(key for key, value in (options or {}).items() if value is not None)
    if given:
        logger.info("ignored options for embeddings: %s", ", ".join(given))


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


def _piece(request: OllamaRequest, text: str, done: bool, calls: list[Call] = ()) -> dict:
    body: dict = {"model": request.name, "created_at": now()}
    if request.kind == CHAT:
        body["message"] = {"role": "assistant", "content": text}
        if calls:
            body["message"]["tool_calls"] = [call.ollama() for call in calls]
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
    """Ollama's stream: one object per token (a tool call once it is whole), then the
    ``done`` object with its stats; a generation the worker broke off ends with an
    ``{"error"}`` object."""
    outcome = Outcome()
    splitter: ReplySplitter | None = None
    for text in texts(chunks, outcome):
        if outcome.tool_format is not None:
            splitter = splitter or ReplySplitter(outcome.tool_format)
            text = splitter.push(text)
            if not text:
                continue
        yield _line(_piece(request, text, False))
    if outcome.error is not None:
        yield _line({"error": str(outcome.error.get("message"))})
        return
    if splitter is not None:
        rest, calls = splitter.finish()
        if rest or calls:
            yield _line(_piece(request, rest, False, calls))
    yield _line(final(request, outcome.finish_reason or "stop", **_stats(outcome, timing)))


def whole(request: OllamaRequest, chunks: Iterable[bytes], timing: Timing) -> dict:
    """The answer with ``stream: false``; raises WorkerFailed if the worker broke off."""
    outcome = Outcome()
    text = "".join(texts(chunks, outcome))
    if outcome.error is not None:
        raise WorkerFailed(str(outcome.error.get("message")))
    answer = final(request, outcome.finish_reason or "stop", text, **_stats(outcome, timing))
    if outcome.tool_format is not None:
        content, calls = parse_reply(text, outcome.tool_format)
        answer["message"]["content"] = content
        if calls:
            answer["message"]["tool_calls"] = [call.ollama() for call in calls]
    return answer
