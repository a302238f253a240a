"""The llama.cpp models the worker holds resident, and the generations on them.

Several models may be resident at once, each with its own llama.cpp context
run by its own batch scheduler (``inference_worker/batch.py``): up to
``parallel`` generations on one model share each decode step, more wait first
come first served for a free sequence, and generations on different models
never wait for each other. Closing or reloading a model waits only for that
model's generations. Loads are serialized among themselves (one lock for the
process: the RSS they measure and llama.cpp's log are the process's), never
behind a generation. ``llama_cpp`` is the only thing this module talks to; it
does no HTTP and knows nothing about the cache directory.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from llama_cpp import Llama

from inference_worker import llama_log
from inference_worker.batch import BatchScheduler, BatchStats, SchedulerClosed
from inference_worker.chat import ChatTemplate
from inference_worker.embeddings import Embeddings
from inference_worker.generation import Generation, Job
from inference_worker.prefix import kv_streams
from inference_worker.resident import ResidentInfo, ResidentModel, rss_bytes
from inference_worker.structured import check_grammar, tool_grammar
from inference_worker.threads import CpuMeter
from model_swap import footprint
from model_swap.generation import Sampling

logger = logging.getLogger(__name__)

# Reads a model's header for its footprint estimate while llama.cpp loads it (loads run
# one at a time in the process, so one thread serves every engine).
_ESTIMATOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="footprint-estimate")
# The context llama_cpp.Llama creates for itself; the scheduler makes the one that serves,
# so this one is kept as small as llama.cpp allows and freed right after the load.
_PLACEHOLDER_CTX = 16


class ModelLoadError(Exception):
    """llama.cpp could not load the file; the message says why."""


class NotLoaded(Exception):
    """The requested model is not resident."""


class PromptTooLong(Exception):
    """The prompt does not fit the context window (or is empty)."""


class OutOfVocabulary(ValueError):
    """A prompt given as token ids holds an id the model's vocabulary does not have."""


@dataclass(frozen=True)
class LoadResult:
    name: str
    seconds: float
    estimated_bytes: int


# One for the process: two engines in one process (tests) must not measure each other's loads.
_LOAD_LOCK = threading.Lock()


class Engine:
    """The resident llama.cpp models, least recently used first. Thread-safe.

    Each resident model serves up to ``parallel`` generations at once, each in
    its own sequence of ``n_ctx`` tokens; nothing done for one model ever
    waits for a generation on another.
    """

    def __init__(
        self,
        *,
        n_gpu_layers: int = -1,
        n_ctx: int = 2048,
        parallel: int = 4,
        prefix_cache: bool = True,
        embedding_tokens: int | None = None,
        n_threads: int = 0,
        clock=time.monotonic,
    ):
        llama_log.install()
        self.n_threads = n_threads  # 0: chosen per decode step (inference_worker/threads.py)
        self.cpu_meter = CpuMeter()  # shared by the resident models' batch loops
        self.n_gpu_layers = n_gpu_layers
        self.n_ctx = n_ctx
        self.parallel = parallel
        self.prefix_cache = prefix_cache
        # KV sequences of n_ctx each per resident model (a spare one for prefix reuse).
        self.kv_streams = kv_streams(parallel, prefix_cache)
        self._clock = clock
        # Guards the table and every counter; held only briefly (waits release it).
        self._state = threading.Lock()
        self._changed = threading.Condition(self._state)  # a scheduler was replaced or closed
        self._models: OrderedDict[str, ResidentModel] = OrderedDict()  # most recently used last
        self._estimates: dict[tuple, int] = {}  # footprint per file version (see _estimate)
        self.batch_stats = BatchStats()
        self.loads = 0  # successful loads since start
        self.last_generation: dict | None = None  # tokens and timing of the latest one
        # Embedding contexts on the resident models' weights (see the hook below).
        if embedding_tokens is None or embedding_tokens >= n_ctx:
            self.embeddings = Embeddings(n_ctx, "N_CTX")
        else:
            self.embeddings = Embeddings(embedding_tokens, "EMBEDDING_TOKENS")

    @property
    def loaded(self) -> str | None:
        """The most recently used resident model (by load, generation start or end), or None."""
        with self._state:
            return next(
                (r.name for r in reversed(self._models.values()) if r.llm is not None), None
            )

    def resident(self) -> list[ResidentInfo]:
        """The resident models, least recently used first."""
        now = self._clock()
        with self._state:
            return [r.info(now) for r in self._models.values() if r.llm is not None]

    def load(self, name: str, path: Path) -> LoadResult:
        """Load ``path`` as ``name``, keeping the other resident models.

        If ``name`` is resident already (a new version of its file), its
        context is closed first, after the generations begun before this call
        on that model; generations begun meanwhile wait and get the new
        version. Blocks while another load runs. On failure ``name`` is not
        resident and ModelLoadError carries llama.cpp's reason.
        """
        while True:
            with self._state:
                resident = self._models.get(name)
            if resident is None:
                fresh = ResidentModel(name, self._clock())
                with _LOAD_LOCK:
                    with self._state:
                        if name in self._models:  # loaded meanwhile: reload it
                            continue
                    result = self._load_into(fresh, path)
                    with self._state:
                        self._models[name] = fresh
                return result
            with resident.swap:
                with self._state:
                    if self._models.get(name) is not resident or resident.unloading:
                        continue  # unloaded meanwhile: retry
                    resident.reloading = True
                self._close(resident, "to reload it")
                try:
                    with _LOAD_LOCK:
                        result = self._load_into(resident, path)
                except BaseException:  # the old version is closed already: nothing is left
                    with self._state:
                        self._models.pop(name, None)
                        resident.reloading = False
                        self._changed.notify_all()
                    raise
                with self._state:
                    self._models.move_to_end(name)
                    resident.reloading = False
                    self._changed.notify_all()
                return result

    def _estimate(self, path: Path) -> int:
        """``path``'s footprint estimate with the KV of ``kv_streams`` sequences of N_CTX.

        Cached per file version.
        """
        try:
            st = path.stat()
            key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns, self.n_ctx, self.kv_streams)
            with self._state:
                if key in self._estimates:
                    return self._estimates[key]
            estimated = footprint.estimate(path, self.n_ctx, n_seq=self.kv_streams).total_bytes
        except (footprint.FootprintError, OSError) as err:  # llama.cpp reads it: unlikely
            logger.warning("no footprint estimate for %s (%s); counting its file size", path, err)
            return path.stat().st_size
        with self._state:
            # Forget other versions of this path: one entry per file the cache holds.
            for old in [k for k in self._estimates if k[0] == key[0]]:
                del self._estimates[old]
            self._estimates[key] = estimated
        return estimated

    def _load_into(self, resident: ResidentModel, path: Path) -> LoadResult:
        """Create ``resident``'s model and scheduler from ``path`` (the caller holds _LOAD_LOCK)."""
        name = resident.name
        started = time.perf_counter()
        # The estimate reads the file's header (~70 ms for Gemma 3 270M): once per file
        # version, and beside llama.cpp's load rather than after it.
        estimating = _ESTIMATOR.submit(self._estimate, path)
        before = rss_bytes()
        with llama_log.collect() as log:
            try:
                llm = Llama(
                    model_path=str(path),
                    n_gpu_layers=self.n_gpu_layers,
                    n_ctx=_PLACEHOLDER_CTX,
                    n_threads=self.n_threads or None,
                    n_threads_batch=self.n_threads or None,
                    verbose=False,
                )
            except Exception as err:  # llama-cpp-python raises ValueError/RuntimeError
                estimating.cancel()
                why = "; ".join(log.errors) or str(err)
                raise ModelLoadError(f"llama.cpp could not load {name}: {why}") from err
        llm._ctx.close()  # the placeholder: the scheduler's context serves
        with llama_log.collect() as context_log:
            try:
                scheduler = BatchScheduler(
                    llm,
                    name=name,
                    parallel=self.parallel,
                    n_ctx_seq=self.n_ctx,
                    stats=self.batch_stats,
                    n_threads=self.n_threads,
                    meter=self.cpu_meter,
                    reuse=self.prefix_cache,
                )
            except Exception as err:
                llm.close()
                why = "; ".join(context_log.errors) or str(err)
                raise ModelLoadError(f"llama.cpp could not create {name}'s context: {why}") from err
        after = rss_bytes()
        seconds = time.perf_counter() - started
        try:
            estimated = estimating.result()
            template = ChatTemplate(llm)
        except BaseException as err:  # never leave the new context behind
            scheduler.close()
            llm.close()
            if isinstance(err, Exception):
                raise ModelLoadError(f"{name} could not be set up: {err}") from err
            raise
        resident.llm, resident.template, resident.scheduler = llm, template, scheduler
        # The weights and the serving context's buffers (not the placeholder's).
        llama_bytes = log.model_bytes + context_log.buffer_bytes
        resident.estimated_bytes, resident.llama_bytes = estimated, llama_bytes
        resident.rss_load_bytes = None if before is None or after is None else after - before
        resident.load_seconds = seconds
        with self._state:
            resident.last_active = self._clock()
            self.loads += 1
        logger.info(
            "loaded %s in %.3fs (n_gpu_layers=%d, %d sequences of %d tokens; estimated %.1f MiB, "
            "llama.cpp %.1f MiB, RSS %+.1f MiB)",
            name,
            seconds,
            self.n_gpu_layers,
            self.parallel,
            self.n_ctx,
            estimated / llama_log.MIB,
            llama_bytes / llama_log.MIB,
            (resident.rss_load_bytes or 0) / llama_log.MIB,
        )
        return LoadResult(name, seconds, estimated)

    def unload(self, name: str) -> bool:
        """Close ``name``'s context after its generations; True if it was resident.

        Generations begun before this call finish; ones begun after it get
        NotLoaded. Returns False at once when ``name`` is not resident. Never
        waits for another model's generations.
        """
        with self._state:
            resident = self._models.get(name)
        if resident is None:
            return False
        with resident.swap:
            with self._state:
                if self._models.get(name) is not resident or resident.unloading:
                    return False
                resident.unloading = True
                self._changed.notify_all()
            try:
                self._close(resident, "")
            finally:
                with self._state:
                    if self._models.get(name) is resident:
                        del self._models[name]
        return True

    def _close(self, resident: ResidentModel, why: str) -> None:
        """Free ``resident``'s context once its generations are over (the caller holds swap)."""
        with self._state:
            resident.waiting += 1
        try:
            resident.scheduler.close()
        finally:
            with self._state:
                resident.waiting -= 1
        self.embeddings.release(resident.llm)  # after an embedding running on it
        resident.llm.close()
        with self._state:
            resident.llm, resident.template, resident.scheduler = None, None, None
        logger.info("unloaded %s%s", resident.name, f" {why}" if why else "")

    def begin(self, model: str | None, job: Job) -> Generation:
        """Check the prompt fits and queue a generation on ``model``; never waits for others.

        ``model`` None means the most recently used resident model. Waits only
        while that model is being reloaded. Raises NotLoaded (also when it is
        being unloaded), ChatTemplateError or PromptTooLong. The caller must
        ``close`` the generation.
        """
        with self._state:
            resident = self._pick(model)
            resident.waiting += 1
            try:
                while resident.reloading and self._current(resident):
                    self._changed.wait()
            finally:
                resident.waiting -= 1
            scheduler = resident.scheduler
            if scheduler is None or not self._current(resident):
                raise NotLoaded(f"{resident.name} is not loaded (it was unloaded)")
            try:
                seq = scheduler.reserve()
            except SchedulerClosed as err:
                raise NotLoaded(f"{resident.name} is not loaded ({err})") from None
            llm, template = resident.llm, resident.template
        try:
            prompt = _prompt(llm, template, job)
            prompt_tokens = prompt.tokens
            if not prompt_tokens:
                raise PromptTooLong("the prompt is empty")
            # A request's num_ctx (Ollama's option) narrows its context, never widens it.
            n_ctx = min(self.n_ctx, job.num_ctx or self.n_ctx)
            room = n_ctx - len(prompt_tokens)
            if room < 1:
                raise PromptTooLong(
                    f"prompt is {len(prompt_tokens)} tokens; the context holds {n_ctx}"
                    + (" (the request's num_ctx)" if n_ctx < self.n_ctx else "")
                    + (
                        f" (the {len(job.tools)} tools offered are part of the prompt: "
                        "offer fewer, or raise the worker's N_CTX)"
                        if prompt.tool_format is not None
                        else ""
                    )
                )
            budget = min(_max_tokens(job, prompt.own_template), room)
            generation = Generation(
                self, resident, llm, scheduler, seq, len(prompt_tokens), budget, prompt.stops, job
            )
            generation.tool_format = prompt.tool_format
        except BaseException:
            scheduler.release(seq)
            raise
        with self._state:
            if self._models.get(resident.name) is resident:
                self._models.move_to_end(resident.name)
            resident.last_active = self._clock()
        scheduler.start(seq, prompt_tokens, budget, prompt.sampling)
        return generation

    def _current(self, resident: ResidentModel) -> bool:
        """Whether ``resident`` is still served (under _state)."""
        return self._models.get(resident.name) is resident and not resident.unloading

    # -- hook for inference_worker/embeddings.py -------------------------------------

    def embedding_model(self, model: str | None) -> tuple[str, Llama]:
        """The name and llama.cpp model of a resident model, for ``self.embeddings``.

        Does not wait for generations: embeddings run in their own context on the
        same weights, and ``_close`` releases that context before the model closes.
        Raises NotLoaded.
        """
        with self._state:
            resident = self._pick(model)
            if resident.llm is None:
                raise NotLoaded(f"{resident.name} is not loaded (it is being reloaded)")
            self._models.move_to_end(resident.name)
            resident.last_active = self._clock()
            return resident.name, resident.llm

    def embedding_bytes(self) -> dict[str, int]:
        """The memory of each resident model's embedding context (0: none created)."""
        with self._state:
            models = [(r.name, r.llm) for r in self._models.values() if r.llm is not None]
        return {name: self.embeddings.context_bytes(llm) for name, llm in models}

    def _pick(self, model: str | None) -> ResidentModel:
        """The resident model a request names (the most recent one for None); under _state."""
        ready = [r for r in self._models.values() if r.llm is not None and not r.unloading]
        if model is None:
            if not ready:
                raise NotLoaded("no model is loaded")
            return ready[-1]
        resident = self._models.get(model)
        if resident is None or resident.unloading:
            names = ", ".join(r.name for r in ready) or "none"
            raise NotLoaded(f"{model} is not loaded (resident: {names})")
        return resident

    def _record(self, resident: ResidentModel, stats: dict) -> None:
        with self._state:
            resident.last_generation = self.last_generation = stats

    def _end(self, resident: ResidentModel) -> None:
        """A generation on ``resident`` is over (its sequence was released)."""
        with self._state:
            resident.last_active = self._clock()
            # Most recently used by the end of its last generation too, as the store counts it.
            if self._models.get(resident.name) is resident:
                self._models.move_to_end(resident.name)


# A chat without max_tokens on a model without a chat template of its own (a base model,
# given a built-in format) rarely ends its turn: it is bounded to this many tokens.
CHAT_WITHOUT_TEMPLATE_MAX_TOKENS = 256


def _max_tokens(job: Job, own_template: bool) -> int | float:
    """The request's budget before the context's room bounds it (inf: no bound)."""
    if job.max_tokens is not None:
        return job.max_tokens
    if job.messages is not None and not own_template:
        return CHAT_WITHOUT_TEMPLATE_MAX_TOKENS
    return float("inf")


@dataclass(frozen=True)
class _Prompt:
    tokens: list[int]
    stops: tuple[str, ...]  # the request's plus the template's
    own_template: bool  # a chat rendered by the model's own template (True for raw prompts)
    sampling: Sampling  # the request's, with the grammar a tool call needs
    tool_format: str | None


def _prompt(llm, template: ChatTemplate, job: Job) -> _Prompt:
    """The prompt's tokens and how to sample and read its reply (GrammarError,
    OutOfVocabulary, ChatTemplateError)."""
    prompt = _render(llm, template, job)
    if prompt.sampling.grammar is not None:
        check_grammar(llm._model.vocab, prompt.sampling.grammar)
    return prompt


def _render(llm, template: ChatTemplate, job: Job) -> _Prompt:
    sampling = job.sampling
    if job.prompt_tokens is not None:
        check_tokens(llm, job.prompt_tokens)
        return _Prompt(list(job.prompt_tokens), sampling.stop, True, sampling, None)
    if job.messages is None:
        tokens = llm.tokenize(job.prompt.encode("utf-8"), add_bos=True, special=False)
        return _Prompt(tokens, sampling.stop, True, sampling, None)
    tools = [dict(tool) for tool in job.tools]
    chat = template.render([m.to_json() for m in job.messages], tools, job.tool_choice)
    text = chat.text.encode("utf-8")
    tokens = llm.tokenize(text, add_bos=not chat.has_bos, special=True)
    stops = sampling.stop + tuple(s for s in chat.stop if s not in sampling.stop)
    if chat.tool_format is not None:
        grammar, trigger = tool_grammar(
            chat.tool_format, tools, job.tool_choice, job.parallel_tool_calls
        )
        sampling = dataclasses.replace(sampling, grammar=grammar, grammar_trigger=trigger)
    return _Prompt(tokens, stops, chat.template == "gguf", sampling, chat.tool_format)


def check_tokens(llm, tokens: tuple[int, ...]) -> None:
    """Raise OutOfVocabulary unless every id is in the model's vocabulary."""
    n_vocab = llm.n_vocab()
    for index, token in enumerate(tokens):
        if not 0 <= token < n_vocab:
            raise OutOfVocabulary(
                f"token {token} (at {index}) is not in this model's vocabulary "
                f"(ids 0 to {n_vocab - 1})"
            )
