"""What a generation asks for, beyond the model: sampling settings and chat messages.

The store's OpenAI routes build these from a client's request and send them to
the worker's ``POST /infer``; the worker parses the same JSON again with the
same functions, so both sides agree on every range and default. Every check
raises ``BadRequest`` naming the offending field (``param``), which the OpenAI
error envelope reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from model_swap.errors import BadRequest
from model_swap.tool_calls import parse_message_tool_calls

# llama.cpp seeds are below this (its 0xFFFFFFFF means "pick a random seed").
SEED_MODULUS = 2**32 - 1
# At most this many stop sequences (OpenAI's limit).
MAX_STOP_SEQUENCES = 4
CHAT_ROLES = ("system", "user", "assistant", "tool")
# Sampling fields beyond OpenAI's, in Ollama's names: (field, kind, low, high).
SAMPLER_RANGES = (
    ("top_k", int, 0, 1_000_000),
    ("min_p", float, 0.0, 1.0),
    ("typical_p", float, 0.0, 1.0),
    ("repeat_penalty", float, 0.0, 10.0),
    ("repeat_last_n", int, -1, 1_000_000),
    ("mirostat", int, 0, 2),
    ("mirostat_tau", float, 0.0, 100.0),
    ("mirostat_eta", float, 0.0, 10.0),
)
EXTRA_SAMPLERS = tuple(field for field, *_ in SAMPLER_RANGES)
# The longest grammar (GBNF text) a request may carry.
MAX_GRAMMAR_CHARS = 200_000
# OpenAI's newer name for the system role; rendered as ``system``.
ROLE_ALIASES = {"developer": "system"}


@dataclass(frozen=True)
class Sampling:
    """Sampling settings of one generation; ``None`` means the engine's default."""

    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # llama.cpp's other samplers (Ollama's option names; also accepted on /v1, as
    # llama-server and vLLM do). None: the chain's default (``inference_worker/sampling.py``).
    top_k: int | None = None
    min_p: float | None = None
    typical_p: float | None = None
    repeat_penalty: float | None = None
    repeat_last_n: int | None = None  # -1: the whole context, 0: off
    mirostat: int | None = None  # 0 off, 1 Mirostat, 2 Mirostat 2.0
    mirostat_tau: float | None = None
    mirostat_eta: float | None = None
    # GBNF text every sampled token must follow (llama.cpp's grammar sampler).
    grammar: str | None = None
    # Set by the worker for tools with ``auto``: the grammar applies only once the text
    # matches this regex (llama.cpp's lazy grammar; its first group starts the constrained
    # part), so a plain-text reply costs no grammar work. Never read from a request.
    grammar_trigger: str | None = None

    def to_json(self) -> dict:
        """The fields that differ from the defaults, as the worker's /infer body takes them."""
        body: dict = {}
        for name in ("temperature", "top_p", "seed", *EXTRA_SAMPLERS, "grammar"):
            value = getattr(self, name)
            if value is not None:
                body[name] = value
        if self.stop:
            body["stop"] = list(self.stop)
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if value:
                body[name] = value
        return body


@dataclass(frozen=True)
class Message:
    """One chat message with its content flattened to text.

    An assistant message may carry the tool calls it made (``{"id", "type": "function",
    "function": {"name", "arguments": <object>}}``, arguments decoded, as chat templates
    take them); a ``tool`` message answers the call named by ``tool_call_id``.
    """

    role: str
    content: str
    tool_calls: tuple[dict, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None

    def to_json(self) -> dict:
        body: dict = {"role": self.role, "content": self.content}
        if self.tool_calls:
            body["tool_calls"] = [dict(call) for call in self.tool_calls]
        if self.tool_call_id is not None:
            body["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            body["name"] = self.name
        return body


def _number(body: dict, field: str, low: float, high: float) -> float | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequest(f"{field} must be a number", param=field)
    if not low <= value <= high:
        raise BadRequest(f"{field} must be between {low:g} and {high:g}", param=field)
    return float(value)


def _integer(body: dict, field: str, low: int, high: int) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON clients that write every number as a float
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{field} must be an integer", param=field)
    if not low <= value <= high:
        raise BadRequest(f"{field} must be between {low} and {high}", param=field)
    return value


def parse_grammar(value: object, field: str = "grammar") -> str | None:
    """A GBNF grammar's text (checked by llama.cpp on the worker); None when absent."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be a string (GBNF)", param=field)
    if len(value) > MAX_GRAMMAR_CHARS:
        raise BadRequest(f"{field} is longer than {MAX_GRAMMAR_CHARS} characters", param=field)
    return check_text(value, field)


def _stop(body: dict) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    sequences = [value] if isinstance(value, str) else value
    if not isinstance(sequences, list) or not all(isinstance(s, str) for s in sequences):
        raise BadRequest("stop must be a string or a list of strings", param="stop")
    if len(sequences) > MAX_STOP_SEQUENCES:
        raise BadRequest(
            f"stop takes at most {MAX_STOP_SEQUENCES} sequences, got {len(sequences)}",
            param="stop",
        )
    for sequence in sequences:
        check_text(sequence, "stop")
    return tuple(s for s in sequences if s)


def parse_sampling(body: dict) -> Sampling:
    """The sampling fields of a request body (OpenAI's names and ranges)."""
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise BadRequest("seed must be an integer", param="seed")
    if seed is not None and not -(2**63) <= seed < 2**63:
        raise BadRequest("seed must fit in 64 bits", param="seed")
    if seed is not None:
        # llama.cpp takes 32 bits, and 2**32 - 1 means "random": fold OpenAI's int64 into range.
        seed %= SEED_MODULUS
    return Sampling(
        temperature=_number(body, "temperature", 0.0, 2.0),
        top_p=_number(body, "top_p", 0.0, 1.0),
        seed=seed,
        stop=_stop(body),
        presence_penalty=_number(body, "presence_penalty", -2.0, 2.0) or 0.0,
        frequency_penalty=_number(body, "frequency_penalty", -2.0, 2.0) or 0.0,
        **{
            field: (
                _integer(body, field, low, high) if kind is int else _number(body, field, low, high)
            )
            for field, kind, low, high in SAMPLER_RANGES
        },
        grammar=parse_grammar(body.get("grammar")),
    )


def check_text(text: str, param: str) -> str:
    """``text`` if it can be tokenized: no NUL, no lone surrogates."""
    if "\x00" in text:
        raise BadRequest(f"{param} must not contain NUL characters", param=param)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(
            f"{param} must be valid Unicode text (no lone surrogates)", param=param
        ) from None
    return text


def _content(value: object, param: str) -> str:
    """A message's content: a string, or a list of text parts joined in order."""
    if isinstance(value, str):
        return check_text(value, param)
    if not isinstance(value, list):
        raise BadRequest(f"{param} must be a string or a list of text parts", param=param)
    pieces = []
    for index, part in enumerate(value):
        where = f"{param}[{index}]"
        if not isinstance(part, dict):
            raise BadRequest(f"{where} must be an object", param=where)
        if part.get("type") != "text":
            raise BadRequest(
                f"{where}.type {part.get('type')!r} is not supported: only text parts are",
                param=f"{where}.type",
            )
        text = part.get("text")
        if not isinstance(text, str):
            raise BadRequest(f"{where}.text must be a string", param=f"{where}.text")
        pieces.append(check_text(text, f"{where}.text"))
    return "".join(pieces)


# Default of the MAX_MESSAGES setting (store and worker): messages in one chat request.
MAX_MESSAGES = 1024
# What a chat template adds around one message, at most, in characters (role markers and
# separators: ChatML's is 26, Gemma's 33 on its first turn). Counted with the content so an
# empty message is not free: the sum bounds the rendered prompt before any template runs.
MESSAGE_MARKUP_CHARS = 32


def check_message_count(value: object, limit: int) -> None:
    """Refuse more than ``limit`` messages before any of them is read (``len`` only)."""
    if isinstance(value, list) and len(value) > limit:
        raise BadRequest(
            f"messages holds {len(value)} messages; the limit is MAX_MESSAGES={limit}",
            param="messages",
        )


def parse_messages(value: object, *, max_chars: int) -> tuple[Message, ...]:
    """``messages``: a non-empty list of system/user/assistant/tool messages with text content
    (an assistant message may carry ``tool_calls`` instead). Their characters plus
    MESSAGE_MARKUP_CHARS for each message after the first (an upper bound of the rendered
    prompt's) must not exceed ``max_chars``."""
    if not isinstance(value, list) or not value:
        raise BadRequest("messages must be a non-empty list", param="messages")
    messages = []
    total = 0
    for index, item in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(item, dict):
            raise BadRequest(f"{where} must be an object", param=where)
        role = item.get("role")
        if isinstance(role, str):
            role = ROLE_ALIASES.get(role, role)
        if role not in CHAT_ROLES:
            raise BadRequest(
                f"{where}.role must be one of {', '.join(CHAT_ROLES)} (got {role!r})",
                param=f"{where}.role",
            )
        calls = ()
        if role == "assistant" and item.get("tool_calls"):
            calls = parse_message_tool_calls(item["tool_calls"], f"{where}.tool_calls")
        raw = item.get("content")
        content = (
            "" if raw is None and (calls or role == "tool") else _content(raw, f"{where}.content")
        )
        call_id = item.get("tool_call_id")
        if call_id is not None and not isinstance(call_id, str):
            raise BadRequest(
                f"{where}.tool_call_id must be a string", param=f"{where}.tool_call_id"
            )
        # Ollama names a tool result's function ``tool_name``.
        name = (item.get("name") or item.get("tool_name")) if role == "tool" else None
        if name is not None and not isinstance(name, str):
            raise BadRequest(f"{where}.name must be a string", param=f"{where}.name")
        total += len(content) + (MESSAGE_MARKUP_CHARS if index else 0)
        if total > max_chars:
            raise BadRequest(
                f"messages hold at least {total} characters with their markup; "
                f"the limit is {max_chars}",
                param="messages",
            )
        messages.append(Message(role, content, calls, call_id if role == "tool" else None, name))
    return tuple(messages)


# The store's header on a worker's ``POST /infer``: how many requests it sent to that model
# at once with this one (the group served right after a swap), so the worker's batch loop
# can give their prompts one step (``inference_worker/admission.py``).
TOGETHER_HEADER = "X-Batch-Together"
MAX_TOGETHER = 4096


def parse_together(value: str | None) -> int:
    """``TOGETHER_HEADER``'s value: 1 when absent; BadRequest unless 1..MAX_TOGETHER."""
    if value is None:
        return 1
    if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= MAX_TOGETHER:
        raise BadRequest(f"{TOGETHER_HEADER} must be a whole number from 1 to {MAX_TOGETHER}")
    return int(value)
