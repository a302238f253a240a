"""LangChain's ChatOpenAI (langchain-openai 1.8.1), the real client on its defaults.

Its embeddings are in tests/test_client_defaults.py (OpenAIEmbeddings sends tiktoken ids).
"""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel

from tests.test_litellm import CLOCK


class Person(BaseModel):
    # Bounded fields, so the tiny model's random weights finish within max_tokens.
    name: Literal["Ann", "Bob"]
    adult: bool


@pytest.fixture
def chat(worker, start_store):
    from langchain_openai import ChatOpenAI

    store = start_store(worker)
    return ChatOpenAI(model="tiny-a", base_url=f"{store.url}/v1", api_key="unused")


def test_chat_openai_invoke_and_stream(chat):
    answer = chat.invoke("hello")
    assert answer.response_metadata["finish_reason"] in ("stop", "length")
    assert answer.usage_metadata["output_tokens"] > 0
    pieces = list(chat.stream("hello"))
    assert len(pieces) > 1


def test_chat_openai_tools_and_structured_output(chat):
    # bind_tools with tool_choice="any" sends "required": a call to the offered function.
    called = chat.bind_tools([CLOCK], tool_choice="any").invoke("what time is it?")
    assert called.tool_calls and called.tool_calls[0]["name"] == "now"
    # with_structured_output's default method is json_schema (strict): a valid Person.
    person = chat.with_structured_output(Person).invoke("a person as JSON")
    assert isinstance(person, Person)
