"""Keeps a lazy grammar's trigger from aborting the worker.

A lazy grammar (tool calls with ``tool_choice: auto``) lets the model write freely until
its trigger pattern matches the text so far; llama.cpp then feeds the grammar everything
from the pattern's first group to the end of the text at once. When the token that fired
the trigger carries on past it with text the grammar refuses (the tiny model's `` hello``
firing a trigger on ``h`` of a grammar that wants ``h`` then ``[ab]``; a ``{}`` token for a
grammar that wants ``{"name"``), llama.cpp throws a C++ exception from
``llama_sampler_accept``, which no C caller can catch: the process aborts, with every
resident model and stream in it.

``TriggerGuard`` mirrors the trigger's buffer in Python, and before a token is accepted
asks a fresh copy of the grammar whether it takes the text the trigger would hand over,
one byte at a time (each byte through a token whose piece is that byte: byte-fallback
tokens, or a byte-level BPE's base tokens). A token it refuses is drawn again, like a
token the grammar refuses once it applies. Python's ``re`` stands in for llama.cpp's
``std::regex`` (ECMAScript); the trigger patterns the worker writes
(``inference_worker/structured.py``) mean the same in both.
"""

from __future__ import annotations

import ctypes
import re
import threading

import llama_cpp

_PIECE_BYTES = 64
# Byte -> a token whose piece is exactly that byte, per vocabulary (found once, lazily).
_byte_tokens: dict[int, dict[int, int]] = {}
_byte_tokens_lock = threading.Lock()


def token_piece(vocab, token: int) -> bytes:
    """The bytes llama.cpp's grammar sees for ``token`` (special tokens rendered)."""
    buffer = ctypes.create_string_buffer(_PIECE_BYTES)
    n = llama_cpp.llama_token_to_piece(vocab, token, buffer, _PIECE_BYTES, 0, True)
    if n < 0:
        buffer = ctypes.create_string_buffer(-n)
        n = llama_cpp.llama_token_to_piece(vocab, token, buffer, -n, 0, True)
    return buffer.raw[:n]


def byte_tokens(vocab) -> dict[int, int]:
    """For each byte value some token's piece is exactly, one such token. Found on first
    use per vocabulary, by reading pieces until every byte has one (Gemma 3 270M: 2 ms, its
    byte tokens come first; a vocabulary without them all is read to its end once)."""
    key = ctypes.cast(vocab, ctypes.c_void_p).value or 0
    with _byte_tokens_lock:
        found = _byte_tokens.get(key)
        if found is None:
            found = {}
            for token in range(llama_cpp.llama_vocab_n_tokens(vocab)):
                piece = token_piece(vocab, token)
                if len(piece) == 1 and piece[0] not in found:
                    found[piece[0]] = token
                    if len(found) == 256:
                        break
            _byte_tokens[key] = found
        return found


def grammar_takes(vocab, grammar: bytes, text: bytes) -> bool:
    """Whether a fresh (not lazy) ``grammar`` accepts ``text`` as the start of its output."""
    tokens = byte_tokens(vocab)
    if any(byte not in tokens for byte in text):
        return False  # cannot be asked: refuse rather than risk the abort
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar, b"root")
    if not sampler:
        return False
    try:
        one = (llama_cpp.llama_token_data * 1)()
        for byte in text:
            one[0].id, one[0].logit, one[0].p = tokens[byte], 1.0, 0.0
            array = llama_cpp.llama_token_data_array(one, 1, -1, False)
            llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
            if one[0].logit == float("-inf"):
                return False
            llama_cpp.llama_sampler_accept(sampler, tokens[byte])
        return True
    finally:
        llama_cpp.llama_sampler_free(sampler)


def trigger_start(pattern: re.Pattern, text: bytes) -> int | None:
    """Where llama.cpp's trigger hands ``text`` to the grammar (None: not triggered): the
    first non-empty group of a match (else the match), found as llama.cpp finds it: the
    whole text for a pattern written ``^...$``, otherwise a match anywhere."""
    source = pattern.pattern
    match = None
    if source[:1] == b"^" and source[-1:] == b"$":
        match = pattern.fullmatch(text)
    match = match or pattern.search(text)
    if match is None:
        return None
    for group in range(1, pattern.groups + 1):
        if match.end(group) > match.start(group) >= 0:
            return match.start(group)
    return match.start()


class TriggerGuard:
    """One sequence's view of its lazy grammar's trigger. Not thread-safe (one sequence)."""

    def __init__(self, vocab, grammar: str, pattern: str):
        self._vocab = vocab
        self._grammar = grammar.encode("utf-8")
        self._pattern = re.compile(pattern.encode("utf-8"))
        self._buffer = b""
        self._next: tuple[int, bytes, int | None] | None = None  # the last token looked at
        self.waiting = True

    def _after(self, token: int) -> tuple[bytes, int | None]:
        """The buffer with ``token``'s piece added, and where the trigger would hand it over
        (None: not fired); kept for ``accepted``, which follows ``refuses`` on the same token."""
        if self._next is None or self._next[0] != token:
            text = self._buffer + token_piece(self._vocab, token)
            self._next = (token, text, trigger_start(self._pattern, text))
        return self._next[1], self._next[2]

    def refuses(self, token: int) -> bool:
        """Whether accepting ``token`` would fire the trigger with text the grammar refuses."""
        if not self.waiting:
            return False
        text, start = self._after(token)
        if start is None:
            return False
        return not grammar_takes(self._vocab, self._grammar, text[start:])

    def accepted(self, token: int) -> None:
        """Follow llama.cpp's buffer after ``token`` was accepted."""
        if not self.waiting:
            return
        text, start = self._after(token)
        self._next = None
        if start is None:
            self._buffer = text
        else:
            self.waiting = False
            self._buffer = b""
