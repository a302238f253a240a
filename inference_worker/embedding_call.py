"""The worker's embedding call: ``POST /infer`` with ``embed`` instead of a prompt.

Checks the body, asks the engine for the resident model and
``inference_worker.embeddings`` for the vectors, and answers with one JSON
object (the store's ``model_store_server.api.embeddings.read_answer`` reads it).
"""

from __future__ import annotations

import base64

from flask import Response, jsonify

from inference_worker.embeddings import EmbeddingError, ModelClosed
from inference_worker.engine import Engine, NotLoaded
from model_swap.errors import BadRequest, Conflict
from model_swap.requests_json import positive_int


def _is_input(item: object) -> bool:
    if isinstance(item, str):
        return True
    return isinstance(item, list) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in item
    )


def _inputs(body: dict) -> tuple[list[str | list[int]], int | None]:
    """An /infer body's ``embed`` (a list of strings or token arrays) and ``dimensions``."""
    texts = body["embed"]
    if not isinstance(texts, list) or not all(_is_input(t) for t in texts):
        raise BadRequest("embed must be a list of strings or token arrays")
    dimensions = body.get("dimensions")
    if dimensions is not None:
        dimensions = positive_int(body, "dimensions", default=1)
    return texts, dimensions


def embed_response(engine: Engine, body: dict, model: str | None) -> Response:
    """Embeddings of ``body["embed"]`` on a resident model, as one JSON answer: the
    unit vectors as one base64 string of little-endian float32 (inputs in order)."""
    texts, dimensions = _inputs(body)
    try:
        name, llm = engine.embedding_model(model)
        embedded = engine.embeddings.embed(llm, texts, dimensions=dimensions)
    except (NotLoaded, ModelClosed) as err:
        raise Conflict(str(err)) from None
    except EmbeddingError as err:
        raise BadRequest(str(err)) from None
    matrix = b"".join(vector.astype("<f4").tobytes() for vector in embedded.vectors)
    response = jsonify(
        model=name,
        dimensions=embedded.dimensions,
        tokens=embedded.token_counts,
        pooling=embedded.pooling,
        normalized=True,
        embeddings_base64=base64.b64encode(matrix).decode("ascii"),
    )
    response.headers["X-Model"] = name
    return response
