"""The Ollama-compatible API under ``/api`` (off with ``OLLAMA_API=0``).

``/api/generate``, ``/api/chat``, ``/api/embed`` and ``/api/embeddings`` go
through the same ``SwapService.serve`` as ``/user_request`` and ``/v1`` (same
policy, swap, headers, log line and metrics); an empty prompt loads the model
(or unloads it with ``keep_alive`` 0) through ``ModelControl``, as the
``/models`` routes do. ``/api/tags``, ``/api/ps`` and ``/api/show`` describe the
store's files and the worker's resident models. ``ollama_api`` and
``ollama_models`` translate the shapes; errors are Ollama's ``{"error": "..."}``.
"""

from __future__ import annotations

import time
from pathlib import Path

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from model_store_server.api import ollama as ollama_api
from model_store_server.api import ollama_models
from model_store_server.api.embeddings import EmbeddingRequest
from model_store_server.api.ollama import OllamaRequest, Timing
from model_store_server.api.ollama_models import Header, ModelMissing
from model_store_server.api.worker_events import error_event
from model_store_server.digests import PerVersionCache
from model_store_server.routes.openai import serve_embeddings
from model_store_server.routes.seed import swap_service
from model_store_server.views import store_status
from model_swap.errors import ApiError, NotFound
from model_swap.footprint import FootprintError, read_header
from model_swap.generation import check_message_count
from model_swap.requests_json import read_json_object

ollama = Blueprint("ollama", __name__, url_prefix="/api")

# The Ollama API version this surface follows (clients such as Open WebUI ask for it).
OLLAMA_VERSION = "0.9.0"
# Ollama endpoints model-swap does not offer (models come from MODELS_DIR).
NOT_OFFERED = ("pull", "push", "create", "copy", "delete", "blobs")


@ollama.errorhandler(ApiError)
def _api_error(err: ApiError):
    response = jsonify(error=err.message)
    response.status_code = err.status
    response.headers.update(err.headers)
    return response


@ollama.errorhandler(HTTPException)
def _http_error(err: HTTPException):
    response = jsonify(error=err.description or err.name)
    response.status_code = err.code or 500
    return response


def _headers_cache() -> PerVersionCache:
    return current_app.extensions.setdefault("ollama_headers", PerVersionCache())


def _header(path: Path) -> Header | None:
    """What ``path``'s GGUF header says (read once per file version); None if unreadable."""
    try:
        metadata, parameters = _headers_cache().get(path, "header", lambda: read_header(path))
    except (FootprintError, OSError):
        return None
    return Header(metadata, parameters)


def _path(name: object) -> tuple[str, Path]:
    model = ollama_models.model_file(name)
    try:
        return model, swap_service().model_path(model)
    except NotFound:
        raise ModelMissing(str(name)) from None


@ollama.get("/version")
def version():
    return jsonify(version=OLLAMA_VERSION)


@ollama.get("/tags")
def tags():
    service = swap_service()
    models = []
    for name in service.available():
        path = service.models_dir / name
        try:
            info = path.stat()
            digest = service.files.digests.sha256(path)
        except OSError:
            continue  # removed meanwhile
        models.append(
            ollama_models.tag_entry(name, info.st_size, info.st_mtime, digest, _header(path))
        )
    return jsonify(models=models)


@ollama.get("/ps")
def ps():
    service = swap_service()
    status = store_status(service)  # its top-level fields describe the first worker
    n_ctx = service.fleet.first().executor.worker_n_ctx
    ttl = status["budgets"]["resident"]["ttl_seconds"]
    models = []
    for entry in status["resident"]:
        path = service.models_dir / entry["name"]
        try:
            digest = service.files.digests.sha256(path)
        except OSError:
            digest = ""
        header = _header(path) if digest else None
        models.append(ollama_models.ps_entry(entry, ttl, digest, header, n_ctx))
    return jsonify(models=models)


@ollama.post("/show")
def show():
    body = read_json_object(request)
    _, path = _path(body.get("model") or body.get("name"))
    header = _header(path)
    if header is None:
        raise ModelMissing(str(body.get("model") or body.get("name")))
    return jsonify(ollama_models.show_body(header, path.stat().st_mtime))


def _limit() -> int:
    return swap_service().settings.max_prompt_chars


@ollama.post("/generate")
def generate():
    return _answer(ollama_api.parse_generate(read_json_object(request), max_prompt_chars=_limit()))


@ollama.post("/chat")
def chat():
    body = read_json_object(request)
    check_message_count(body.get("messages"), swap_service().settings.max_messages)
    return _answer(ollama_api.parse_chat(body, max_prompt_chars=_limit()))


def _answer(parsed: OllamaRequest) -> Response:
    started = time.perf_counter_ns()
    if parsed.job is None:
        return _load_or_unload(parsed)
    try:
        served = swap_service().serve(
            parsed.model,
            parsed.job,
            route=request.path,
            stream_error=error_event,
            keep_alive=parsed.keep_alive,
        )
    except NotFound as err:
        raise ModelMissing(parsed.name) from err
    timing = Timing(started, time.perf_counter_ns())
    if parsed.stream:
        response = Response(
            ollama_api.ndjson(parsed, served.stream, timing), mimetype="application/x-ndjson"
        )
        response.call_on_close(served.close)
    else:
        response = jsonify(served.read_whole(lambda s: ollama_api.whole(parsed, s, timing)))
    response.headers.update(served.headers())
    n_ctx = _n_ctx_of(served.worker)
    response.headers.update(ollama_api.context_headers(parsed.job, n_ctx))
    return response


def _n_ctx_of(url: str) -> int | None:
    """N_CTX of the worker at ``url`` as it last reported (None: unknown, or gone)."""
    return next((n.executor.worker_n_ctx for n in swap_service().fleet.nodes if n.url == url), None)


def _load_or_unload(parsed: OllamaRequest) -> Response:
    """An empty prompt: load the model (``keep_alive`` applies), or unload it with 0."""
    control = current_app.extensions["model_control"]
    _path(parsed.name)  # an unknown model is a 404 either way
    if parsed.keep_alive == 0:
        try:
            done = control.unload(parsed.model)
        except NotFound:  # not resident: nothing to unload
            done = {"action": "none", "evicted": [], "unloaded": []}
        reason = "unload"
    else:
        done = control.load(parsed.model, keep_alive=parsed.keep_alive)
        reason = "load"
    response = jsonify(ollama_api.final(parsed, reason))
    response.headers.update(
        {
            "X-Cache-Action": done["action"],
            "X-Evicted": ",".join(done["evicted"]),
            "X-Unloaded": ",".join(done["unloaded"]),
            "X-Model": parsed.model,
        }
    )
    return response


def _embed(parsed: EmbeddingRequest) -> tuple:
    started = time.perf_counter_ns()
    try:
        vectors, headers = serve_embeddings(parsed, request.path)
    except NotFound as err:
        raise ModelMissing(parsed.model) from err
    return vectors, headers, time.perf_counter_ns() - started


@ollama.post("/embed")
def embed():
    body = read_json_object(request)
    parsed = ollama_api.parse_embed(body, max_prompt_chars=_limit())
    vectors, headers, elapsed = _embed(parsed)
    response = jsonify(
        model=body.get("model"),
        embeddings=vectors.matrix.tolist(),
        total_duration=elapsed,
        prompt_eval_count=vectors.prompt_tokens,
    )
    response.headers.update(headers)
    return response


@ollama.post("/embeddings")
def embeddings():
    parsed = ollama_api.parse_legacy_embeddings(
        read_json_object(request), max_prompt_chars=_limit()
    )
    vectors, headers, _ = _embed(parsed)
    response = jsonify(embedding=vectors.matrix[0].tolist())
    response.headers.update(headers)
    return response


@ollama.route("/<path:rest>", methods=["GET", "POST", "PUT", "DELETE", "HEAD"])
def not_offered(rest: str):
    if rest.split("/")[0] in NOT_OFFERED:
        message = f"/api/{rest} is not offered by model-swap: models are the files in MODELS_DIR"
        response = jsonify(error=message)
        response.status_code = 501
        return response
    response = jsonify(error=f"/api/{rest} is not part of model-swap's Ollama API")
    response.status_code = 404
    return response
