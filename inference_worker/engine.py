"""The one llama.cpp model the worker has loaded, and generation on it.

All access to the llama.cpp context is serialized through one first-come,
first-served lock: a load waits for running generations, and generations run
one at a time in arrival order. ``llama_cpp`` is the only thing this module
talks to; it does no HTTP and knows nothing about the cache directory.
"""

from __future__ import annotations

import codecs
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
from llama_cpp import Llama

from inference_worker import llama_log
from inference_worker.chat import ChatTemplate
from inference_worker.fair_lock import FairLock
from inference_worker.stops import StopScanner
from model_swap.generation import Message, Sampling
from model_swap.logs import CONSOLE

logger = logging.getLogger(__name__)


class ModelLoadError(Exception):
    """llama.cpp could not load the file; the message says why."""


class NotLoaded(Exception):
    """The requested model is not the loaded one."""


class PromptTooLong(Exception):
    """The prompt does not fit the context window."""


@dataclass(frozen=True)
class LoadResult:
    name: str
    seconds: float


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
    """One turn on the llama.cpp context, holding the engine's lock until ``close``.

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
        llm,
        model: str,
        prompt_tokens: list[int],
        max_tokens: int,
        sampling: Sampling,
        stops: tuple[str, ...],
        hide_markup: bool = False,
    ):
        self._engine = engine
        self._llm = llm
        self.model = model
        self._prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self._sampling = sampling
        self._stops = stops
        self._hide_markup = hide_markup
        self.prompt_token_count = len(prompt_tokens)
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self._closed = False

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
            self._engine.last_generation = {
                "model": self.model,
                "tokens": count,
                "seconds": round(total, 6),
                "tps": round(count / total, 2) if total > 0 else 0.0,
            }
            CONSOLE.info(
                "[infer] tokens=%d total=%.3fs tps=%.1f",
                count,
                total,
                count / total if total > 0 else 0.0,
            )

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._engine._lock.release()


class Engine:
    """The loaded llama.cpp model (at most one). Thread-safe."""

    def __init__(self, *, n_gpu_layers: int = -1, n_ctx: int = 2048):
        llama_log.install()
        self.n_gpu_layers = n_gpu_layers
        self.n_ctx = n_ctx
        self._lock = FairLock()
        self._llm = None
        self._name: str | None = None
        self._template: ChatTemplate | None = None
        self.loads = 0  # successful loads since start
        self.last_generation: dict | None = None  # tokens and timing of the latest one

    @property
    def loaded(self) -> str | None:
        return self._name

    def load(self, name: str, path: Path) -> LoadResult:
        """Close the current model, then load ``path`` as ``name`` (waits its turn).

        On failure no model is loaded and ModelLoadError carries llama.cpp's reason.
        """
        with self._lock:
            self._close_current()
            started = time.perf_counter()
            with llama_log.collect_errors() as reasons:
                try:
                    llm = Llama(
                        model_path=str(path),
                        n_gpu_layers=self.n_gpu_layers,
                        n_ctx=self.n_ctx,
                        verbose=False,
                    )
                except Exception as err:  # llama-cpp-python raises ValueError/RuntimeError
                    why = "; ".join(reasons) or str(err)
                    raise ModelLoadError(f"llama.cpp could not load {name}: {why}") from err
            self._llm, self._name = llm, name
            self._template = ChatTemplate(llm)
            self.loads += 1
            seconds = time.perf_counter() - started
        logger.info("loaded %s in %.3fs (n_gpu_layers=%d)", name, seconds, self.n_gpu_layers)
        return LoadResult(name, seconds)

    def unload(self, name: str | None = None) -> bool:
        """Unload the current model (only if it is ``name``, when given); True if one was.

        Returns at once, without queueing behind generations, when ``name`` is
        not the loaded model (deleting an idle cached file must not wait).
        """
        if name is not None and name != self._name:
            return False
        with self._lock:
            if self._name is None or (name is not None and name != self._name):
                return False
            self._close_current()
            return True

    def _close_current(self) -> None:
        if self._llm is not None:
            previous = self._name
            self._llm.close()
            self._llm, self._name, self._template = None, None, None
            logger.info("unloaded %s", previous)

    def begin(self, model: str | None, job: Job) -> Generation:
        """Wait for the context, check ``model`` is loaded and the prompt fits; return a turn.

        Raises NotLoaded, ChatTemplateError or PromptTooLong (the lock is released again).
        """
        self._lock.acquire()
        try:
            if self._llm is None:
                raise NotLoaded("no model is loaded")
            if model is not None and model != self._name:
                raise NotLoaded(f"{model} is not loaded (loaded: {self._name})")
            prompt_tokens, stops = self._prompt(job)
            room = self.n_ctx - len(prompt_tokens)
            if room < 1:
                raise PromptTooLong(
                    f"prompt is {len(prompt_tokens)} tokens; the context holds {self.n_ctx}"
                )
            budget = room if job.max_tokens is None else min(job.max_tokens, room)
            return Generation(
                self,
                self._llm,
                self._name,
                prompt_tokens,
                budget,
                job.sampling,
                stops,
                job.hide_markup,
            )
        except BaseException:
            self._lock.release()
            raise

    def _prompt(self, job: Job) -> tuple[list[int], tuple[str, ...]]:
        """The prompt's tokens and the stop sequences (the request's plus the template's)."""
        if job.messages is None:
            tokens = self._llm.tokenize(job.prompt.encode("utf-8"), add_bos=True, special=False)
            return tokens, job.sampling.stop
        chat = self._template.render([m.to_json() for m in job.messages])
        text = chat.text.encode("utf-8")
        tokens = self._llm.tokenize(text, add_bos=not chat.has_bos, special=True)
        return tokens, job.sampling.stop + tuple(s for s in chat.stop if s not in job.sampling.stop)
