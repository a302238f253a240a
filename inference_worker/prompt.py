"""A request's prompt on a resident model: its tokens (a raw prompt, token ids, or chat
messages rendered by the model's template), the stops and sampling its reply needs, and
its token budget. Pure apart from llama.cpp's tokenizer; ``Engine.begin`` uses it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from inference_worker.chat import ChatTemplate
from inference_worker.generation import Job
from inference_worker.structured import check_grammar, tool_grammar
from model_swap.generation import Sampling


class PromptTooLong(Exception):
    """The prompt does not fit the context window (or is empty)."""


class OutOfVocabulary(ValueError):
    """A prompt given as token ids holds an id the model's vocabulary does not have."""


# A chat without max_tokens on a model without a chat template of its own (a base model,
# given a built-in format) rarely ends its turn: it is bounded to this many tokens.
CHAT_WITHOUT_TEMPLATE_MAX_TOKENS = 256


def max_tokens(job: Job, own_template: bool) -> int | float:
    """The request's budget before the context's room bounds it (inf: no bound)."""
    if job.max_tokens is not None:
        return job.max_tokens
    if job.messages is not None and not own_template:
        return CHAT_WITHOUT_TEMPLATE_MAX_TOKENS
    return float("inf")


@dataclass(frozen=True)
class Prompt:
    tokens: list[int]
    stops: tuple[str, ...]  # the request's plus the template's
    own_template: bool  # a chat rendered by the model's own template (True for raw prompts)
    sampling: Sampling  # the request's, with the grammar a tool call needs
    tool_format: str | None


def render_prompt(llm, template: ChatTemplate, job: Job) -> Prompt:
    """The prompt's tokens and how to sample and read its reply (GrammarError,
    OutOfVocabulary, ChatTemplateError)."""
    prompt = _render(llm, template, job)
    if prompt.sampling.grammar is not None:
        check_grammar(llm._model.vocab, prompt.sampling.grammar)
    return prompt


def _render(llm, template: ChatTemplate, job: Job) -> Prompt:
    sampling = job.sampling
    if job.prompt_tokens is not None:
        check_tokens(llm, job.prompt_tokens)
        return Prompt(list(job.prompt_tokens), sampling.stop, True, sampling, None)
    if job.messages is None:
        tokens = llm.tokenize(job.prompt.encode("utf-8"), add_bos=True, special=False)
        return Prompt(tokens, sampling.stop, True, sampling, None)
    tools = [dict(tool) for tool in job.tools]
    chat = template.render([m.to_json() for m in job.messages], tools, job.tool_choice)
    text = chat.text.encode("utf-8")
    tokens = llm.tokenize(text, add_bos=not chat.has_bos, special=True)
    stops = sampling.stop + tuple(s for s in chat.stop if s not in sampling.stop)
    if chat.tool_format is not None:
        grammar, trigger = tool_grammar(
            chat.tool_format, tools, job.tool_choice, job.parallel_tool_calls
        )
        sampling = dataclasses.replace(sampling, grammar=grammar, grammar_trigger=trigger)
    return Prompt(tokens, stops, chat.template == "gguf", sampling, chat.tool_format)


def check_tokens(llm, tokens: tuple[int, ...]) -> None:
    """Raise OutOfVocabulary unless every id is in the model's vocabulary."""
    n_vocab = llm.n_vocab()
    for index, token in enumerate(tokens):
        if not 0 <= token < n_vocab:
            raise OutOfVocabulary(
                f"token {token} (at {index}) is not in this model's vocabulary "
                f"(ids 0 to {n_vocab - 1})"
            )
