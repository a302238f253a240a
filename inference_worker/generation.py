"""One generation on a resident model's context: what to generate and the token stream.

``Engine.begin`` (``inference_worker/engine.py``) grants a ``Generation``
holding the model's lock; the generation hands it back to the engine when it
is closed.
"""

from __future__ import annotations

import codecs
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import llama_cpp

from inference_worker.resident import ResidentModel
from inference_worker.stops import StopScanner
from model_swap.generation import Message, Sampling
from model_swap.logs import CONSOLE

if TYPE_CHECKING:
    from inference_worker.engine import Engine


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


class Generation:
    """One turn on a resident model's context, holding that model's lock until ``close``.

    Created by ``Engine.begin``; ``tokens`` streams the completion as text
    pieces. After it ends, ``finish_reason`` (``stop``: the model ended its
    turn or a stop sequence matched; ``length``: the token budget or the
    context ran out) and the token counts are set. ``close`` is idempotent
    and must be called (the streaming response calls it when the client
    finishes or disconnects).
    """

    def __init__(
        self,
        engine: Engine,
        resident: ResidentModel,
        prompt_tokens: list[int],
        max_tokens: int,
        sampling: Sampling,
        stops: tuple[str, ...],
        hide_markup: bool = False,
    ):
        self._engine = engine
        self._resident = resident
        self._llm = resident.llm
        self.model = resident.name
        self._prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self._sampling = sampling
        self._stops = stops
        self._hide_markup = hide_markup
        self.prompt_token_count = len(prompt_tokens)
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self._closed = False
        self._close_lock = threading.Lock()

    def _sampler_args(self) -> dict:
        sampling = self._sampling
        args = {
            "frequency_penalty": sampling.frequency_penalty,
            "presence_penalty": sampling.presence_penalty,
        }
        if sampling.temperature is not None:
            args["temp"] = sampling.temperature
        if sampling.top_p is not None:
            args["top_p"] = sampling.top_p
        return args

    def tokens(self) -> Iterator[str]:
        """Yield each generated token's text as soon as it is sampled (blocking)."""
        llm = self._llm
        vocab = llm._model.vocab
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        scanner = StopScanner(self._stops)
        seed = self._sampling.seed
        # Every generation sets the seed: a request without one must not inherit the last one's.
        llm.set_seed(llama_cpp.LLAMA_DEFAULT_SEED if seed is None else seed)
        if seed is not None:
            # A prompt evaluated in part from the KV cache can round differently from one
            # evaluated whole, which changes the text; a seeded request asks for the same
            # text every time, so its prompt is always evaluated whole.
            llm.reset()
        started = time.perf_counter()
        count = 0
        finish = "length"
        try:
            for token in llm.generate(self._prompt_tokens, reset=True, **self._sampler_args()):
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    finish = "stop"
                    break
                count += 1
                if count == 1:
                    CONSOLE.info("[infer] TTFT: %.3fs", time.perf_counter() - started)
                hidden = self._hide_markup and _is_markup(llm, token)
                text = "" if hidden else scanner.push(decoder.decode(llm.detokenize([token])))
                if text:
                    yield text
                if scanner.stopped:
                    finish = "stop"
                    break
                if count >= self.max_tokens:
                    break
            tail = scanner.push(decoder.decode(b"", final=True)) + scanner.flush()
            if tail:
                yield tail
            self.finish_reason = finish
        finally:
            self.completion_tokens = count
            total = time.perf_counter() - started
            self._engine._record(
                self._resident,
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
        with self._close_lock:
            closed, self._closed = self._closed, True
        if not closed:
            self._engine._end(self._resident)
