"""One generation on a resident model: what to generate, and its text stream.

``Engine.begin`` (``inference_worker/engine.py``) grants a ``Generation``
holding a sequence of the model's batch scheduler (``inference_worker/batch.py``).
The scheduler's thread samples token ids; this module turns them into text in
the reader's thread (UTF-8 pieces, hidden markup, stop sequences), so that work
overlaps the next decode step. Closing the generation releases its sequence.
"""

from __future__ import annotations

import codecs
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import llama_cpp

from inference_worker.batch import BatchScheduler, Sequence
from inference_worker.stops import StopScanner
from model_swap.generation import Message, Sampling
from model_swap.logs import CONSOLE

# Multimodal and control markers written like words joined by underscores, such as
# Gemma's ``<start_of_image>``; HTML tags (``<table>``, ``</s>``), which vocabularies
# also mark user-defined, never contain an underscore and stay text.
_MARKUP = re.compile(r"<[a-z0-9]+(?:_[a-z0-9]+)+>")


def _is_markup(llm, token: int) -> bool:
    """Whether ``token`` is a user-defined marker token such as ``<start_of_image>``."""
    attr = llama_cpp.llama_vocab_get_attr(llm._model.vocab, token)
    if not attr & llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED:
        return False
    return bool(_MARKUP.fullmatch(llm._model.token_get_text(token)))


def unglued(before: str, piece: str) -> str:
    """``piece``, the first text after hidden tokens that followed ``before``: with a space in
    front when neither side has whitespace there, so hiding a token never glues two words
    (``Say hello.<start_of_turn>user`` reads ``Say hello. user``, not ``hello.user``)."""
    if before and piece and not before[-1].isspace() and not piece[0].isspace():
        return " " + piece
    return piece


@dataclass(frozen=True)
class Job:
    """What to generate: a raw ``prompt`` or chat ``messages``, a token budget, sampling.

    ``max_tokens`` None means until the model ends its turn or the context is full.
    """

    prompt: str | None = None
    messages: tuple[Message, ...] | None = None
    max_tokens: int | None = None
    sampling: Sampling = Sampling()
    # Leave out markup tokens the vocabulary marks user-defined, such as Gemma's
    # ``<start_of_image>``: a chat answer is text. The seed's raw path keeps them.
    hide_markup: bool = False
    # A raw prompt given as the model's token ids (OpenAI's token arrays).
    prompt_tokens: tuple[int, ...] | None = None
    # A context smaller than the worker's N_CTX for this request (Ollama's num_ctx).
    num_ctx: int | None = None
    # Tools offered to a chat (``model_swap.tool_calls``) and how the reply may use them.
    tools: tuple[dict, ...] = ()
    tool_choice: str = "none"
    parallel_tool_calls: bool = True


class Generation:
    """One request's turn on a resident model, holding one of its sequences until ``close``.

    Created by ``Engine.begin``; ``tokens`` streams the completion as text
    pieces. After it ends, ``finish_reason`` (``stop``: the model ended its
    turn or a stop sequence matched; ``length``: the token budget or the
    context ran out) and the token counts are set, and ``queue_seconds``
    (waiting for a free sequence) and ``ttft_seconds`` (from getting one to
    the first token). ``close`` is idempotent and must be called (the
    streaming response calls it when the client finishes or disconnects); a
    sequence still generating then stops at the scheduler's next step.
    """

    def __init__(
        self,
        model: str,
        llm,
        scheduler: BatchScheduler,
        seq: Sequence,
        prompt_token_count: int,
        max_tokens: int,
        stops: tuple[str, ...],
        job: Job,
        *,
        on_record: Callable[[dict], None] = lambda stats: None,
        on_end: Callable[[], None] = lambda: None,
    ):
        # The engine's bookkeeping: the timing of a finished stream, and the end of the turn.
        self._on_record, self._on_end = on_record, on_end
        self._llm = llm
        self._scheduler = scheduler
        self._seq = seq
        self.model = model
        self.max_tokens = max_tokens
        self._stops = stops
        self._hide_markup = job.hide_markup
        self.prompt_token_count = prompt_token_count
        self.completion_tokens = 0
        self.cached_tokens = 0  # prompt tokens found in kept KV cells (set once admitted)
        self.finish_reason: str | None = None
        self.queue_seconds: float | None = None
        self.ttft_seconds: float | None = None
        self.tool_format: str | None = None  # the call format the reply is read in (tools)
        self._closed = False

    def tokens(self) -> Iterator[str]:
        """Yield each generated token's text as soon as it is sampled (blocking)."""
        llm, seq = self._llm, self._seq
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        scanner = StopScanner(self._stops)
        count = 0
        finish = "length"
        last = ""  # the last text decoded (for ``unglued``)
        gap = False  # tokens were hidden since ``last``
        try:
            while True:
                item = self._scheduler.next_item(seq)
                if not isinstance(item, int):
                    if isinstance(item, Exception):
                        raise item
                    finish = "stop" if item == "stop" else "length"
                    break
                count += 1
                if count == 1:
                    self.cached_tokens = seq.reused
                    now = time.perf_counter()
                    self.queue_seconds = seq.admitted - seq.submitted
                    self.ttft_seconds = now - seq.admitted
                    CONSOLE.info("[infer] TTFT: %.3fs", self.ttft_seconds)
                raw = llm.detokenize([item])
                # A chat answer is text: markup tokens and control tokens (which detokenize
                # to nothing, such as a stray ``<start_of_turn>``) leave a gap, not glue.
                if self._hide_markup and (not raw or _is_markup(llm, item)):
                    gap = gap or bool(last)
                    continue
                piece = decoder.decode(raw)
                if gap and piece:
                    piece, gap = unglued(last, piece), False
                last = piece or last
                text = scanner.push(piece)
                if text:
                    yield text
                if scanner.stopped:
                    finish = "stop"
                    self._scheduler.cancel(seq)
                    break
            tail = scanner.push(decoder.decode(b"", final=True)) + scanner.flush()
            if tail:
                yield tail
            self.finish_reason = finish
        finally:
            self.completion_tokens = count
            started = seq.admitted if seq.admitted is not None else seq.submitted
            total = time.perf_counter() - started
            self._on_record(
                {
                    "model": self.model,
                    "tokens": count,
                    "seconds": round(total, 6),
                    "tps": round(count / total, 2) if total > 0 else 0.0,
                },
            )
            CONSOLE.info(
                "[infer] tokens=%d total=%.3fs tps=%.1f",
                count,
                total,
                count / total if total > 0 else 0.0,
            )

    def close(self) -> None:
        if self._scheduler.release(self._seq):
            self._on_end()
