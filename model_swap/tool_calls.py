"""Tool calling: the offered tools, the calls in a conversation, and calls in a model's reply.

Both services use this module. The store checks a request's ``tools`` and
``tool_choice`` and the ``tool_calls`` of earlier assistant messages; the
worker renders them (``inference_worker/chat.py``) and says which *format* the
model was prompted to answer in; the store then reads the reply in that format:

- ``hermes``: Hermes / Qwen, ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
- ``llama3``: Llama 3.1+ JSON, ``{"name": ..., "parameters": {...}}`` (one per line or ``;``)
- ``mistral``: ``[TOOL_CALLS][{"name": ..., "arguments": {...}}]`` (or ``name[ARGS]{...}``)
- ``generic``: model-swap's own for templates without tools,
  ``{"tool_calls": [{"name": ..., "arguments": {...}}]}``, else plain text.

``ReplySplitter`` separates streamed text from a call as it arrives. Pure:
nothing here does I/O.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

from model_swap.errors import BadRequest

HERMES, LLAMA3, MISTRAL, GENERIC = "hermes", "llama3", "mistral", "generic"
FORMATS = (HERMES, LLAMA3, MISTRAL, GENERIC)
AUTO, NONE, REQUIRED = "auto", "none", "required"
# Most tools in one request, and most bytes of them as compact JSON (what the template or
# the generic system message renders, and what becomes a grammar): both are refused (400)
# before any tool is read, on the store and on the worker.
MAX_TOOLS = 128
MAX_TOOLS_BYTES = 256 * 1024
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _arguments(value: object, where: str) -> dict:
    """A call's arguments as an object (OpenAI sends a JSON string, Ollama an object)."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise BadRequest(f"{where} must be a JSON object (as a string)", param=where) from None
    if not isinstance(value, dict):
        raise BadRequest(f"{where} must be a JSON object", param=where)
    return value


def parse_message_tool_calls(value: object, where: str) -> tuple[dict, ...]:
    """An assistant message's ``tool_calls``, normalised to
    ``{"id", "type": "function", "function": {"name", "arguments": <object>}}``."""
    if not isinstance(value, list):
        raise BadRequest(f"{where} must be a list", param=where)
    calls = []
    for index, item in enumerate(value):
        here = f"{where}[{index}]"
        function = item.get("function") if isinstance(item, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise BadRequest(f"{here}.function.name must be a string", param=here)
        ident = item.get("id")
        calls.append(
            {
                "id": ident if isinstance(ident, str) and ident else f"call_{index}",
                "type": "function",
                "function": {
                    "name": function["name"],
                    "arguments": _arguments(
                        function.get("arguments"), f"{here}.function.arguments"
                    ),
                },
            }
        )
    return tuple(calls)


def parse_tools(value: object, param: str = "tools") -> tuple[dict, ...]:
    """``tools``: OpenAI's (and Ollama's) list of ``{"type": "function", "function": {...}}``,
    normalised to ``{"type", "function": {"name", "description", "parameters"}}``."""
    from model_swap.json_schema import check_schema

    if value is None or value == []:
        return ()
    if not isinstance(value, list):
        raise BadRequest(f"{param} must be a list", param=param)
    if len(value) > MAX_TOOLS:
        raise BadRequest(f"{param} holds {len(value)} tools; the limit is {MAX_TOOLS}", param=param)
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_TOOLS_BYTES:
        raise BadRequest(
            f"{param} takes {size} bytes as JSON; the limit is {MAX_TOOLS_BYTES}", param=param
        )
    tools, names = [], set()
    for index, item in enumerate(value):
        where = f"{param}[{index}]"
        if not isinstance(item, dict) or item.get("type", "function") != "function":
            raise BadRequest(f"{where} must be a function tool", param=where)
        function = item.get("function")
        if not isinstance(function, dict):
            raise BadRequest(f"{where}.function must be an object", param=f"{where}.function")
        name = function.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise BadRequest(
                f"{where}.function.name must be 1-64 letters, digits, _ . or -",
                param=f"{where}.function.name",
            )
        if name in names:
            raise BadRequest(f"{where}: two tools are named {name}", param=where)
        names.add(name)
        parameters = function.get("parameters")
        if parameters is None:
            parameters = {"type": "object", "properties": {}}
        check_schema(parameters, f"{where}.function.parameters")
        description = function.get("description")
        tools.append(
            {
                "type": "function",
                "function": {
                    "name": name,
                    "description": description if isinstance(description, str) else "",
                    "parameters": parameters,
                },
            }
        )
    return tuple(tools)


def parse_tool_choice(value: object, tools: tuple[dict, ...], param: str = "tool_choice") -> str:
    """``tool_choice``: ``auto``, ``none``, ``required`` or a named function (its name)."""
    if value is None:
        return AUTO if tools else NONE
    if value in (AUTO, NONE, REQUIRED):
        chosen = value
    elif isinstance(value, dict) and isinstance(value.get("function"), dict):
        chosen = value["function"].get("name")
        if not isinstance(chosen, str):
            raise BadRequest(f"{param}.function.name must be a string", param=param)
    else:
        raise BadRequest(
            f"{param} must be auto, none, required or {{type: function, function: {{name}}}}",
            param=param,
        )
    if chosen != NONE and not tools:
        raise BadRequest(f"{param} {chosen!r} needs tools", param=param)
    if chosen not in (AUTO, NONE, REQUIRED) and chosen not in tool_names(tools):
        raise BadRequest(f"{param} names {chosen}, which is not among the tools", param=param)
    return chosen


def tool_names(tools: tuple[dict, ...] | list[dict]) -> list[str]:
    return [tool["function"]["name"] for tool in tools]


# -- reading a reply -------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One call read from a reply: its id, the function's name and its arguments."""

    id: str
    name: str
    arguments: dict

    def openai(self, index: int) -> dict:
        """OpenAI's ``tool_calls`` entry (arguments as a JSON string); ``index`` for deltas."""
        return {
            "index": index,
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": json.dumps(self.arguments)},
        }

    def ollama(self) -> dict:
        return {"function": {"name": self.name, "arguments": self.arguments}}


def _call(obj: object) -> Call | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    arguments = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return Call(call_id(), obj["name"], arguments)


def _json_values(text: str, separators: str) -> list | None:
    """The JSON values ``text`` holds one after another (``separators`` between); None if
    anything else is in it."""
    decoder = json.JSONDecoder()
    values, position = [], 0
    while True:
        while position < len(text) and (text[position].isspace() or text[position] in separators):
            position += 1
        if position == len(text):
            return values
        try:
            value, position = decoder.raw_decode(text, position)
        except ValueError:
            return None
        values.append(value)


def _calls(objects: list | None) -> list[Call] | None:
    if not objects:
        return None
    calls = [_call(obj) for obj in objects]
    return None if any(call is None for call in calls) else calls


_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_PYTHON_TAG = "<|python_tag|>"
_MISTRAL = "[TOOL_CALLS]"
_MISTRAL_ARGS = re.compile(r"([A-Za-z0-9_.\-]+)\[ARGS\]")


def parse_reply(text: str, fmt: str) -> tuple[str, list[Call]]:
    """``text`` split into its content and the calls it makes in format ``fmt``.

    A reply that is not a well-formed call is content, whole.
    """
    if fmt == HERMES and "<tool_call>" in text:
        found = _HERMES.findall(text)
        calls = _calls([_first(_json_values(piece, "")) for piece in found])
        if calls:
            return text[: text.index("<tool_call>")].strip(), calls
    elif fmt == MISTRAL and _MISTRAL in text:
        head, _, tail = text.partition(_MISTRAL)
        calls = _mistral(tail)
        if calls:
            return head.strip(), calls
    elif fmt == LLAMA3:
        stripped = text.strip().removeprefix(_PYTHON_TAG)
        if stripped.startswith("{"):
            calls = _calls(_json_values(stripped, ";"))
            if calls:
                return "", calls
    elif fmt == GENERIC:
        values = _json_values(text.strip(), "") if text.strip().startswith("{") else None
        if values and len(values) == 1 and isinstance(values[0], dict):
            calls = _calls(values[0].get("tool_calls"))
            if calls:
                return "", calls
    return text, []


def _first(values: list | None) -> object:
    return values[0] if values and len(values) == 1 else None


def _mistral(tail: str) -> list[Call] | None:
    values = _json_values(tail, ",")
    if values and len(values) == 1 and isinstance(values[0], list):
        return _calls(values[0])
    # Newer templates: name[ARGS]{...} per call.
    calls, position = [], 0
    for match in _MISTRAL_ARGS.finditer(tail):
        if tail[position : match.start()].strip(" ,\n" + _MISTRAL):
            return None
        try:
            arguments, position = json.JSONDecoder().raw_decode(tail, match.end())
        except ValueError:
            return None
        calls.append({"name": match.group(1), "arguments": arguments})
    return _calls(calls) if calls and not tail[position:].strip() else None


def _marker(fmt: str) -> str | None:
    """Text that starts a call anywhere in a reply, for formats that have one."""
    return {HERMES: "<tool_call>", MISTRAL: _MISTRAL}.get(fmt)


class ReplySplitter:
    """Streams a reply's content while holding back what may be a call.

    ``push`` returns the content that can be shown now; ``finish`` returns the
    rest of the content and the calls. For formats whose calls start the reply
    (``llama3``, ``generic``) a reply that begins with ``{`` is held to the end.
    """

    def __init__(self, fmt: str):
        self.fmt = fmt
        self._held = ""
        self._in_call = False
        self._started = False

    def push(self, text: str) -> str:
        self._held += text
        if self._in_call:
            return ""
        marker = _marker(self.fmt)
        if marker is None:
            stripped = self._held.lstrip()
            if not stripped:
                return ""
            if not self._started:
                self._started = True
                if stripped[0] == "{" or _PYTHON_TAG.startswith(stripped[: len(_PYTHON_TAG)]):
                    self._in_call = True
                    return ""
            out, self._held = self._held, ""
            return out
        if marker in self._held:
            index = self._held.index(marker)
            out, self._held = self._held[:index], self._held[index:]
            self._in_call = True
            return out
        keep = _partial_suffix(self._held, marker)
        out = self._held[: len(self._held) - keep]
        self._held = self._held[len(out) :]
        return out

    def finish(self) -> tuple[str, list[Call]]:
        held, self._held = self._held, ""
        if not held:
            return "", []
        content, calls = parse_reply(held, self.fmt)
        return (content, calls)


def _partial_suffix(text: str, marker: str) -> int:
    """The length of the longest end of ``text`` that begins ``marker``."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0
