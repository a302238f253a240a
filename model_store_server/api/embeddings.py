"""Translation between embedding requests and the worker's embedding call.

``parse_openai`` checks a ``POST /v1/embeddings`` body the way OpenAI's server
does (a 400 naming the field for anything wrong or unsupported) and
``EmbeddingRequest.job`` builds the worker's ``/infer`` body for it (``embed``:
the inputs, one request for the whole batch). ``read_answer`` reads the
worker's answer (unit vectors as little-endian float32) and ``openai_body``
formats OpenAI's answer, as floats or base64. The Ollama surface
(``api/ollama.py``) reuses ``parse_inputs`` and ``read_answer``. Nothing here
does I/O.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from model_store_server.api import tiktoken_ids
from model_store_server.api.openai import parse_model
from model_swap.errors import BadRequest, WorkerFailed
from model_swap.generation import check_text
from model_swap.requests_json import parse_keep_alive

# OpenAI's limit on the inputs of one request.
MAX_INPUTS = 2048
ENCODINGS = ("float", "base64")


@dataclass(frozen=True)
class EmbeddingRequest:
    """A checked embedding request: model, inputs and how to answer."""

    model: str
    inputs: tuple[str | list[int], ...]  # texts, or token arrays (the model's ids)
    encoding_format: str = "float"
    dimensions: int | None = None
    keep_alive: float | None = None

    def job(self) -> dict:
        """The worker's /infer body (less ``model``): every input in one call."""
        job: dict = {"embed": list(self.inputs)}
        if self.dimensions is not None:
            job["dimensions"] = self.dimensions
        return job


def _token_array(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value
    )


def parse_inputs(
    value: object, field: str, *, max_chars: int, tokens: bool = False
) -> tuple[str | list[int], ...]:
    """A string or a non-empty list of non-empty strings; with ``tokens``, also a token
    array or a list of them (OpenAI's; the ids are the model's, checked on the worker)."""
    if isinstance(value, str) or (tokens and value and _token_array(value)):
        texts = [value]
        single = True
    else:
        texts, single = value, False
    if not isinstance(texts, list) or not texts:
        raise BadRequest(f"{field} must be a string or a non-empty list of strings", param=field)
    if len(texts) > MAX_INPUTS:
        raise BadRequest(
            f"{field} holds {len(texts)} inputs; the limit is {MAX_INPUTS}", param=field
        )
    total = 0
    for index, text in enumerate(texts):
        where = field if single else f"{field}[{index}]"
        if tokens and _token_array(text):
            if not text:
                raise BadRequest(f"{where} must not be empty", param=field)
            total += len(text)
            continue
        if isinstance(text, int | list) and not isinstance(text, bool):
            raise BadRequest(
                f"{where}: token arrays are not supported here; send text", param=field
            )
        if not isinstance(text, str):
            raise BadRequest(f"{where} must be a string", param=field)
        if not text:
            raise BadRequest(f"{where} must not be empty", param=field)
        check_text(text, where)
        total += len(text)
    if total > max_chars:
        raise BadRequest(f"{field} holds {total} characters; the limit is {max_chars}", param=field)
    return tuple(texts)


def parse_dimensions(body: dict) -> int | None:
    value = body.get("dimensions")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest("dimensions must be a positive integer", param="dimensions")
    return value


def parse_openai(
    body: dict, *, max_prompt_chars: int, token_ids: str = "tiktoken"
) -> EmbeddingRequest:
    """A ``POST /v1/embeddings`` body; raises BadRequest or NotFound. Token arrays are
    tiktoken's cl100k_base ids, decoded to text, or with ``token_ids="model"`` the
    model's own (``tiktoken_ids``)."""
    model = parse_model(body)
    inputs = parse_inputs(body.get("input"), "input", max_chars=max_prompt_chars, tokens=True)
    if token_ids == "tiktoken":
        inputs = tiktoken_ids.as_text(inputs)
    encoding = body.get("encoding_format")
    if encoding is None:
        encoding = "float"
    if encoding not in ENCODINGS:
        raise BadRequest(
            f"encoding_format must be one of {', '.join(ENCODINGS)}", param="encoding_format"
        )
    return EmbeddingRequest(
        model,
        inputs,
        encoding,
        parse_dimensions(body),
        parse_keep_alive(body.get("keep_alive")),
    )


@dataclass(frozen=True)
class Vectors:
    """The worker's answer: unit vectors (one row per input) and tokens per input."""

    model: str
    matrix: np.ndarray  # float32, shape (inputs, dimensions)
    token_counts: tuple[int, ...]
    pooling: str

    @property
    def prompt_tokens(self) -> int:
        return sum(self.token_counts)


def read_answer(chunks: Iterable[bytes]) -> Vectors:
    """The worker's embedding answer from the relayed bytes; WorkerFailed if it broke off
    (the swap service ends a failed relay with an ``{"error"}`` line)."""
    body = b"".join(chunks)
    answer = None
    for line in body.split(b"\n"):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict) and "error" in data:
            raise WorkerFailed(str((data["error"] or {}).get("message")))
        answer = data
    try:
        raw = base64.b64decode(answer["embeddings_base64"], validate=True)
        dimensions = int(answer["dimensions"])
        tokens = tuple(int(n) for n in answer["tokens"])
        matrix = np.frombuffer(raw, dtype="<f4").reshape(len(tokens), dimensions)
        return Vectors(str(answer["model"]), matrix, tokens, str(answer.get("pooling")))
    except (TypeError, KeyError, ValueError, binascii.Error):
        raise WorkerFailed("the worker's embedding answer is not readable") from None


def openai_body(request: EmbeddingRequest, vectors: Vectors, model: str) -> dict:
    """OpenAI's ``list`` of ``embedding`` objects, floats or base64 float32 as asked."""
    data = []
    for index, row in enumerate(vectors.matrix):
        if request.encoding_format == "base64":
            embedding: object = base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
        else:
            embedding = row.tolist()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = vectors.prompt_tokens
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
