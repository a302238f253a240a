"""The worker's ``POST /infer`` generation body, checked and turned into a ``Job``.

Besides the prompt (text, token ids, or chat ``messages``), ``max_tokens`` and
the sampling fields (``model_swap.generation``), a body may carry what the
store's API translators forward: ``num_ctx`` (a smaller context for this
request), ``json_schema`` (turned into a grammar here), ``grammar`` (GBNF),
and for a chat ``tools``, ``tool_choice`` and ``parallel_tool_calls``. Every
check raises ``BadRequest``.
"""

from __future__ import annotations

import dataclasses

from inference_worker.config import WorkerSettings
from inference_worker.generation import Job
from inference_worker.structured import GrammarError, schema_grammar
from model_swap.errors import BadRequest
from model_swap.generation import parse_messages, parse_sampling
from model_swap.json_schema import check_schema
from model_swap.requests_json import positive_int, prompt_text
from model_swap.tool_calls import NONE, parse_tool_choice, parse_tools

DEFAULT_MAX_TOKENS = 512


def _prompt_tokens(value: object) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise BadRequest("prompt_tokens must be a non-empty list of token ids")
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise BadRequest("prompt_tokens must hold integers (token ids)")
    return tuple(value)


def parse_job(body: dict, settings: WorkerSettings, *, events: bool) -> Job:
    """The /infer body: ``prompt``, ``prompt_tokens`` or ``messages``, ``max_tokens``, sampling.

    ``max_tokens`` defaults to 512; ``null`` means until the turn ends or the context is full.
    The ``events`` stream format (the OpenAI API's) leaves out markup tokens.
    """
    given = [field for field in ("prompt", "prompt_tokens", "messages") if field in body]
    if len(given) > 1:
        raise BadRequest(f"give one of prompt, prompt_tokens or messages, not {given}")
    prompt = messages = tokens = None
    if "messages" in body:
        messages = parse_messages(body["messages"], max_chars=settings.max_request_bytes)
    elif "prompt_tokens" in body:
        tokens = _prompt_tokens(body["prompt_tokens"])
    else:
        prompt = prompt_text(body, max_chars=settings.max_request_bytes)
    max_tokens = None
    if body.get("max_tokens", 0) is not None:
        max_tokens = positive_int(body, "max_tokens", default=DEFAULT_MAX_TOKENS)
        if max_tokens > settings.n_ctx:
            raise BadRequest(
                f"max_tokens {max_tokens} exceeds the context size N_CTX={settings.n_ctx}"
            )
    num_ctx = None
    if body.get("num_ctx") is not None:
        num_ctx = positive_int(body, "num_ctx", default=settings.n_ctx)
    sampling = parse_sampling(body)
    schema = body.get("json_schema")
    if schema is not None:
        if sampling.grammar is not None:
            raise BadRequest("give either json_schema or grammar, not both")
        try:
            grammar = schema_grammar(check_schema(schema, "json_schema"))
        except GrammarError as err:
            raise BadRequest(str(err)) from None
        sampling = dataclasses.replace(sampling, grammar=grammar)
    tools = parse_tools(body.get("tools")) if messages is not None else ()
    choice = parse_tool_choice(body.get("tool_choice"), tools) if tools else NONE
    if tools and choice != NONE and sampling.grammar is not None:
        raise BadRequest("tools cannot be combined with json_schema or grammar")
    parallel = body.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise BadRequest("parallel_tool_calls must be a boolean")
    return Job(
        prompt,
        messages,
        max_tokens,
        sampling,
        hide_markup=events,
        prompt_tokens=tokens,
        num_ctx=num_ctx,
        tools=tools,
        tool_choice=choice,
        parallel_tool_calls=parallel,
    )
