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

Tools: a GGUF template that takes ``tools`` and writes one of the call formats
``model_swap.tool_calls`` reads (Hermes/Qwen ``<tool_call>``, Llama 3.1 JSON,
Mistral ``[TOOL_CALLS]``) renders them itself; any other gets the ``generic``
format: the tools described in a system message, earlier calls and results
written as text. ``ChatPrompt.tool_format`` says which, so the reply is read in it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace

import jinja2
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from inference_worker.structured import generic_system_prompt
from model_swap.tool_calls import GENERIC, HERMES, LLAMA3, MISTRAL, NONE

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
    tool_format: str | None = None  # how the reply writes calls (None: no tools offered)


def native_format(template: str | None) -> str | None:
    """The call format a chat template prompts for, if it takes ``tools`` and writes one
    of the formats model-swap reads; None otherwise."""
    if not template or "tools" not in template:
        return None
    if "<tool_call>" in template:
        return HERMES
    if "[TOOL_CALLS]" in template:
        return MISTRAL
    if "<|python_tag|>" in template or (
        "<|start_header_id|>" in template and '"parameters"' in template
    ):
        return LLAMA3
    return None


def as_text(messages: list[dict], tools: list[dict], choice: str) -> list[dict]:
    """Messages for a template without tools: the tools in a system message (when offered),
    earlier calls as the assistant's JSON, tool results as user turns."""
    out = []
    for message in messages:
        if message.get("tool_calls"):
            calls = [
                {"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
                for c in message["tool_calls"]
            ]
            text = json.dumps({"tool_calls": calls}, ensure_ascii=False)
            content = f"{message['content']}\n{text}" if message["content"] else text
            out.append({"role": "assistant", "content": content})
        elif message["role"] == "tool":
            name = message.get("name") or message.get("tool_call_id") or "tool"
            out.append({"role": "user", "content": f"Result of {name}: {message['content']}"})
        else:
            out.append({"role": message["role"], "content": message["content"]})
    if tools and choice != NONE:
        offer = generic_system_prompt(tools, choice)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{offer}"}
        else:
            out.insert(0, {"role": "system", "content": offer})
    return out


class ChatTemplate:
    """The chat template of one loaded model. Built once per load; thread-safe to call."""

    def __init__(self, llm):
        template = llm.metadata.get(TEMPLATE_KEY)
        self._bos = _token_text(llm, llm.token_bos())
        self._eos = _token_text(llm, llm.token_eos())
        self._formatter = None
        self.native_tools = native_format(template)
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

    def render(
        self, messages: list[dict], tools: list[dict] | None = None, choice: str = NONE
    ) -> ChatPrompt:
        """The prompt for ``messages``, offering ``tools`` unless ``choice`` is ``none``."""
        offered = bool(tools) and choice != NONE
        native = self.native_tools if self._formatter is not None else None
        history = any(m.get("tool_calls") or m["role"] == "tool" for m in messages)
        if native is None and (offered or history):
            messages = as_text(messages, list(tools or ()), choice)
        prompt = self._render(messages, list(tools) if offered and native else None)
        return replace(prompt, tool_format=(native or GENERIC) if offered else None)

    def _render(self, messages: list[dict], tools: list[dict] | None) -> ChatPrompt:
        if self._formatter is None:
            return _gemma(messages) if self.source == "gemma" else _chatml(messages)
        try:
            rendered = self._formatter(messages=messages, tools=tools)
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
