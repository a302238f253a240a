"""The OpenAI-compatible API: ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``,
``/v1/embeddings``.

Every generation and embedding goes through the same ``SwapService.serve`` as
``/user_request`` (same policy, swap, headers and log line); ``openai_api`` and
``embeddings_api`` translate the shapes. Errors under ``/v1/`` use OpenAI's envelope
(``model_swap.errors``).
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from model_store_server.api import embeddings as embeddings_api
from model_store_server.api import openai as openai_api
from model_store_server.api import openai_answers
from model_store_server.api.embeddings import EmbeddingRequest, Vectors
from model_store_server.api.openai import OpenAIRequest
from model_store_server.api.openai_answers import Answer
from model_store_server.api.worker_events import Outcome, error_event
from model_store_server.loading import Loading, serve_streaming, sse_error
from model_store_server.routes.seed import swap_service
from model_store_server.views import describe_models
from model_swap.errors import ApiError, NotFound
from model_swap.generation import check_message_count
from model_swap.requests_json import read_json_object

openai = Blueprint("openai", __name__, url_prefix="/v1")

OWNER = "model-swap"


def _model_object(info: dict) -> dict:
    return {
        "id": info["name"],
        "object": "model",
        "created": info["created"],
        "owned_by": OWNER,
        "state": info["state"],
        "size_bytes": info["size_bytes"],
    }


def model_list(service) -> dict:
    """The body of ``GET /v1/models`` (also embedded in the dashboard's first page)."""
    return {"object": "list", "data": [_model_object(i) for i in describe_models(service)]}


@openai.get("/models")
def list_models():
    return jsonify(model_list(swap_service()))


@openai.get("/models/<path:model>")
def get_model(model: str):
    found = describe_models(swap_service(), [model])
    if not found:
        raise NotFound(f"The model `{model}` does not exist", param="model")
    return jsonify(_model_object(found[0]))


def _loading_response(parsed: OpenAIRequest, pending: Loading) -> Response:
    """A streamed answer that starts with SSE comments while the model is loaded."""

    def events():
        yield from pending.comments()
        if pending.served is None:
            yield sse_error(pending.error)
            return
        answer = Answer(parsed, pending.served.model or parsed.model)
        yield from openai_answers.sse_stream(answer, pending.served.stream)

    response = Response(events(), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers.update(pending.headers())
    response.call_on_close(pending.close)
    return response


def _generate(parsed: OpenAIRequest) -> Response:
    service = swap_service()
    options = {
        "route": request.path,
        "stream_error": error_event,
        "keep_alive": parsed.keep_alive,
    }
    if parsed.more_jobs:
        return _generate_many(service, parsed, options)
    try:
        if parsed.stream:
            served = serve_streaming(service, parsed.model, parsed.job, **options)
            if isinstance(served, Loading):
                return _loading_response(parsed, served)
        else:
            served = service.serve(parsed.model, parsed.job, **options)
    except NotFound as err:
        err.message, err.param = f"The model `{parsed.model}` does not exist", "model"
        raise
    answer = Answer(parsed, served.model or parsed.model)
    if parsed.stream:
        events = openai_answers.sse_stream(answer, served.stream)
        response = Response(events, mimetype="text/event-stream")
        response.headers["Cache-Control"] = "no-cache"
        response.call_on_close(served.close)
    else:
        response = jsonify(served.read_whole(lambda s: openai_answers.full_response(answer, s)))
    response.headers.update(served.headers())
    return response


def _serve(service, parsed: OpenAIRequest, job: dict, options: dict):
    try:
        return service.serve(parsed.model, job, **options)
    except NotFound as err:
        err.message, err.param = f"The model `{parsed.model}` does not exist", "model"
        raise


def _generate_many(service, parsed: OpenAIRequest, options: dict) -> Response:
    """Completions for a list of prompts: each generated in turn, answered as choices in
    order (the first one's swap decides the headers)."""
    first = _serve(service, parsed, parsed.job, options)
    answer = Answer(parsed, first.model or parsed.model)
    if parsed.stream:

        def streams():
            try:
                yield first.stream
            finally:
                first.close()
            for job in parsed.more_jobs:
                try:
                    served = _serve(service, parsed, job, options)
                except ApiError as err:  # after the first choice went out: end the stream
                    yield [error_event(err)]
                    return
                try:
                    yield served.stream
                finally:
                    served.close()

        response = Response(
            openai_answers.sse_many(answer, streams()), mimetype="text/event-stream"
        )
        response.headers["Cache-Control"] = "no-cache"
    else:
        choices, total = [], Outcome()
        for index, job in enumerate(parsed.jobs):
            served = first if index == 0 else _serve(service, parsed, job, options)
            choice, outcome = served.read_whole(
                lambda s, i=index: openai_answers.read_choice(answer, s, i)
            )
            choices.append(choice)
            total.add(outcome)
        response = jsonify(answer.whole(choices, total))
    response.headers.update(first.headers())
    return response


@openai.post("/chat/completions")
def chat_completions():
    settings = swap_service().settings
    body = read_json_object(request)
    check_message_count(body.get("messages"), settings.max_messages)
    return _generate(openai_api.parse_chat(body, max_prompt_chars=settings.max_prompt_chars))


@openai.post("/completions")
def completions():
    limit = swap_service().settings.max_prompt_chars
    return _generate(openai_api.parse_completion(read_json_object(request), max_prompt_chars=limit))


def serve_embeddings(request_: EmbeddingRequest, route: str) -> tuple[Vectors, dict[str, str]]:
    """Embed ``request_``'s inputs through the swap path (one worker call for the batch);
    returns the vectors and the response headers (X-Cache-Action and friends)."""
    try:
        served = swap_service().serve(
            request_.model,
            request_.job(),
            route=route,
            stream_error=error_event,
            keep_alive=request_.keep_alive,
        )
    except NotFound as err:
        err.message, err.param = f"The model `{request_.model}` does not exist", "model"
        raise
    return served.read_whole(embeddings_api.read_answer), served.headers()


@openai.post("/embeddings")
def embeddings():
    settings = swap_service().settings
    parsed = embeddings_api.parse_openai(
        read_json_object(request),
        max_prompt_chars=settings.max_prompt_chars,
        token_ids=settings.embedding_token_ids,
    )
    vectors, headers = serve_embeddings(parsed, request.path)
    response = jsonify(embeddings_api.openai_body(parsed, vectors, vectors.model or parsed.model))
    response.headers.update(headers)
    return response
