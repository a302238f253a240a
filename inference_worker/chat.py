"""Turning chat messages into a prompt with the model's own chat template.

A GGUF file usually carries its chat template as ``tokenizer.chat_template``
metadata (a Jinja template from the model's authors); llama-cpp-python's
``Jinja2ChatFormatter`` renders it the way Hugging Face's tokenizers do. A file
without one gets a built-in format chosen by its ``general.architecture``:

- ``gemma*`` (Gemma's published turn format; the system message is put in
  front of the first user turn, as Gemma's own template does)::

    <start_of_turn>user\\n{system}\\n\\n{content}<end_of_turn>\\n<start_of_turn>model\\n

- anything else: ChatML, the format llama.cpp's own server also falls back to::

    <|im_start|>system\\n{content}<|im_end|>\\n<|im_start|>user\\n{content}<|im_end|>\\n
    <|im_start|>assistant\\n

Either way the result is a prompt to tokenize with special tokens parsed, plus
the text that ends the assistant's turn (a stop sequence).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import jinja2
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

logger = logging.getLogger(__name__)

TEMPLATE_KEY = "tokenizer.chat_template"
ARCHITECTURE_KEY = "general.architecture"
CHATML_END = "<|im_end|>"
GEMMA_END = "<end_of_turn>"


class ChatTemplateError(ValueError):
    """The model's template refused the messages (for example, roles that do not alternate)."""


@dataclass(frozen=True)
class ChatPrompt:
    text: str
    stop: tuple[str, ...]
    # Whether ``text`` already starts with the BOS token (templates usually write it).
    has_bos: bool
    template: str  # "gguf", "gemma" or "chatml", for logs


class ChatTemplate:
    """The chat template of one loaded model. Built once per load; thread-safe to call."""

    def __init__(self, llm):
        template = llm.metadata.get(TEMPLATE_KEY)
        self._bos = _token_text(llm, llm.token_bos())
        self._eos = _token_text(llm, llm.token_eos())
        self._formatter = None
        architecture = str(llm.metadata.get(ARCHITECTURE_KEY, ""))
        self.source = "gemma" if architecture.startswith("gemma") else "chatml"
        if template:
            try:
                self._formatter = Jinja2ChatFormatter(
                    template=template, eos_token=self._eos, bos_token=self._bos
                )
                self.source = "gguf"
            except jinja2.TemplateError:
                # A template llama-cpp-python's Jinja cannot compile: fall back, as llama.cpp does.
                self._formatter = None

    def render(self, messages: list[dict]) -> ChatPrompt:
        if self._formatter is None:
            return _gemma(messages) if self.source == "gemma" else _chatml(messages)
        try:
            rendered = self._formatter(messages=messages)
        except ValueError as err:  # the template's own raise_exception("...")
            raise ChatTemplateError(
                f"the model's chat template refused the messages: {err}"
            ) from None
        except (jinja2.TemplateError, TypeError) as err:
            logger.warning("the chat template failed: %r", err)
            raise ChatTemplateError(
                "the model's chat template could not render these messages"
            ) from None
        stops = tuple(s for s in (rendered.stop or ()) if s)
        has_bos = bool(self._bos) and rendered.prompt.startswith(self._bos)
        return ChatPrompt(rendered.prompt, stops, has_bos, "gguf")


def _token_text(llm, token: int) -> str:
    if token < 0:
        return ""
    return llm._model.token_get_text(token)


def _chatml(messages: list[dict]) -> ChatPrompt:
    turns = [f"<|im_start|>{m['role']}\n{m['content']}{CHATML_END}\n" for m in messages]
    text = "".join(turns) + "<|im_start|>assistant\n"
    return ChatPrompt(text, (CHATML_END,), has_bos=False, template="chatml")


def _gemma(messages: list[dict]) -> ChatPrompt:
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    turns = []
    for message in messages:
        if message["role"] == "system":
            continue
        role = "model" if message["role"] == "assistant" else "user"
        content = message["content"]
        if system and not turns:  # Gemma's own template: in front of the first turn
            content = f"{system}\n\n{content}"
        turns.append(f"<start_of_turn>{role}\n{content}{GEMMA_END}\n")
    if not turns:  # only system messages: they are the user's turn
        turns.append(f"<start_of_turn>user\n{system}{GEMMA_END}\n")
    text = "".join(turns) + "<start_of_turn>model\n"
    return ChatPrompt(text, (GEMMA_END,), has_bos=False, template="gemma")
