"""Grammars for structured output and tool calls, in llama.cpp's GBNF.

A JSON Schema becomes GBNF through llama-cpp-python's converter (a port of
llama.cpp's ``json_schema_to_grammar``); the schema was already checked for
constructs the converter cannot enforce (``model_swap.json_schema``). A tool
call's grammar wraps the calls' JSON in the model's own call format
(``model_swap.tool_calls``). ``check_grammar`` has llama.cpp parse a grammar
against the model's vocabulary before a sequence's sampler chain is built, so
a grammar it cannot take is that request's 400, never a failed batch step.
"""

from __future__ import annotations

import json

import llama_cpp
from llama_cpp.llama_grammar import SchemaConverter

from model_swap.tool_calls import GENERIC, HERMES, LLAMA3, MISTRAL, REQUIRED, tool_names

ROOT = "root"
# Calls one reply may make when parallel calls are allowed (a grammar without a bound lets a
# model that keeps choosing "another call" run out of tokens inside one).
MAX_PARALLEL_CALLS = 4


class GrammarError(ValueError):
    """llama.cpp cannot take this grammar or schema (the message says what)."""


def _converter() -> SchemaConverter:
    return SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)


def _visit(converter: SchemaConverter, schema: dict, name: str) -> str:
    try:
        resolved = converter.resolve_refs(schema, "request")
        return converter.visit(resolved, name)
    except (ValueError, KeyError, AssertionError, TypeError, RecursionError) as err:
        raise GrammarError(f"the JSON Schema cannot be turned into a grammar: {err}") from None


def schema_grammar(schema: dict) -> str:
    """GBNF whose sentences are exactly the JSON texts ``schema`` accepts."""
    converter = _converter()
    _visit(converter, schema, "")
    return converter.format_grammar()


def _call_schema(tool: dict, arguments_key: str) -> dict:
    function = tool["function"]
    return {
        "type": "object",
        "properties": {
            "name": {"const": function["name"]},
            arguments_key: function["parameters"],
        },
        "required": ["name", arguments_key],
        "additionalProperties": False,
    }


# Where a call starts in a reply, per format (llama.cpp looks for the pattern in the text so
# far; the first group starts what the grammar constrains). Used for ``auto``: text before
# it is free.
TRIGGERS = {
    HERMES: r"[\s\S]*?(<tool_call>)[\s\S]*",
    MISTRAL: r"[\s\S]*?(\[TOOL_CALLS\])[\s\S]*",
    # Anchored: llama.cpp looks for a pattern anywhere in the reply unless it is written
    # ^...$, and these start a call only when the reply opens with "{".
    LLAMA3: r"^\s*(\{)[\s\S]*$",
    GENERIC: r"^\s*(\{)[\s\S]*$",
}


def tool_grammar(
    fmt: str, tools: list[dict], choice: str, parallel: bool
) -> tuple[str, str | None]:
    """The grammar of calls (of the named function, for a named ``choice``) in ``fmt``, and
    for ``auto`` the trigger after which it applies (None: from the first token)."""
    names = tool_names(tools)
    offered = [tool for tool in tools if tool["function"]["name"] == choice] or tools
    key = "parameters" if fmt == LLAMA3 else "arguments"
    converter = _converter()
    calls = [_call_schema(tool, key) for tool in offered]
    call = _visit(converter, {"anyOf": calls} if len(calls) > 1 else calls[0], "call")

    def repeated(item: str, separator: str) -> str:
        if not parallel:
            return item
        return f"{item} ( {separator} {item} ){{0,{MAX_PARALLEL_CALLS - 1}}}"

    if fmt == HERMES:
        root = repeated(f'"<tool_call>\\n" {call} "\\n</tool_call>"', '"\\n"')
    elif fmt == MISTRAL:
        items = repeated(call, '", "')
        root = f'"[TOOL_CALLS][" {items} "]"'
    elif fmt == LLAMA3:
        root = repeated(call, '"; "')
    else:
        items = repeated(call, '", "')
        root = f'"{{\\"tool_calls\\": [" {items} "]}}"'
    trigger = None if choice == REQUIRED or choice in names else TRIGGERS[fmt]
    return f"{ROOT} ::= {root}\n{converter.format_grammar()}", trigger


def generic_system_prompt(tools: list[dict], choice: str) -> str:
    """The system message that offers ``tools`` to a model whose template has none."""
    lines = [
        "You can call these tools (JSON Schema of each one's arguments):",
        *(
            json.dumps(tool["function"], ensure_ascii=False, separators=(",", ":"))
            for tool in tools
        ),
        'To call tools, reply with only a JSON object: {"tool_calls": [{"name": <tool name>, '
        '"arguments": {<arguments>}}]}.',
    ]
    if choice == REQUIRED or choice in tool_names(tools):
        lines.append("You must call a tool now.")
    else:
        lines.append("Otherwise reply to the user in plain text.")
    return "\n".join(lines)


def check_grammar(vocab, grammar: str) -> None:
    """Raise GrammarError unless llama.cpp parses ``grammar`` for this vocabulary."""
    sampler = llama_cpp.llama_sampler_init_grammar(
        vocab, grammar.encode("utf-8"), ROOT.encode("utf-8")
    )
    if not sampler:
        first = grammar.strip().splitlines()[0][:120] if grammar.strip() else ""
        raise GrammarError(
            "llama.cpp could not parse the grammar (GBNF) or it has no `root` rule "
            f"(first line: {first!r})"
        )
    llama_cpp.llama_sampler_free(sampler)
