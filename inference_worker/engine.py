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

import functools
import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path

from llama_cpp import Llama

from inference_worker import llama_log
from inference_worker.batch import BatchStats, SchedulerClosed
from inference_worker.embeddings import Embeddings
from inference_worker.generation import Generation, Job
from inference_worker.kv_disk import KvDisk
from inference_worker.loader import LOAD_LOCK, Loader, LoadResult, ModelLoadError
from inference_worker.prefix import kv_streams
from inference_worker.prompt import OutOfVocabulary, PromptTooLong, max_tokens, render_prompt
from inference_worker.resident import ResidentInfo, ResidentModel
from inference_worker.threads import CpuMeter

# Raised by Engine methods; defined beside what raises them.
__all__ = ["Engine", "Job", "LoadResult", "ModelLoadError", "NotLoaded", "OutOfVocabulary"]
__all__ += ["PromptTooLong"]

logger = logging.getLogger(__name__)


class NotLoaded(Exception):
    """The requested model is not resident."""


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
        kv_cache_bytes: int = 0,
        kv_disk: KvDisk | None = None,
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
        self.batch_stats = BatchStats()
        self._loader = Loader(
            n_gpu_layers=n_gpu_layers,
            n_ctx=n_ctx,
            parallel=parallel,
            prefix_cache=prefix_cache,
            n_threads=n_threads,
            batch_stats=self.batch_stats,
            cpu_meter=self.cpu_meter,
            kv_cache_bytes=kv_cache_bytes,
            kv_disk=kv_disk,
        )
        self.kv_cache_bytes = self._loader.kv_cache_bytes
        self.kv_disk = kv_disk
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
                with LOAD_LOCK:
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
                    with LOAD_LOCK:
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

    def _load_into(self, resident: ResidentModel, path: Path) -> LoadResult:
        result = self._loader.load_into(resident, path)
        with self._state:
            resident.last_active = self._clock()
            self.loads += 1
        return result

    def estimate(self, path: Path) -> int:
        """``path``'s estimated memory once resident here (weights, KV, prompt cache)."""
        return self._loader.estimate(path)

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
            self._loader.close(resident)
        finally:
            with self._state:
                resident.waiting -= 1
        self.embeddings.release(resident.llm)  # after an embedding running on it
        resident.llm.close()
        with self._state:
            resident.llm, resident.template, resident.scheduler = None, None, None
        logger.info("unloaded %s%s", resident.name, f" {why}" if why else "")

    def begin(self, model: str | None, job: Job, together: int = 1) -> Generation:
        """Check the prompt fits and queue a generation on ``model``; never waits for others.

        ``model`` None means the most recently used resident model. Waits only
        while that model is being reloaded. Raises NotLoaded (also when it is
        being unloaded), ChatTemplateError or PromptTooLong. The caller must
        ``close`` the generation. ``together``: requests sent to the model at once
        with this one (``Admission.gathering``).
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
            prompt = render_prompt(llm, template, job)
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
            budget = min(max_tokens(job, prompt.own_template), room)
            generation = Generation(
                resident.name,
                llm,
                scheduler,
                seq,
                len(prompt_tokens),
                budget,
                prompt.stops,
                job,
                on_record=functools.partial(self.record_generation, resident),
                on_end=functools.partial(self.generation_ended, resident),
            )
            generation.tool_format = prompt.tool_format
        except BaseException:
            scheduler.release(seq)
            raise
        with self._state:
            if self._models.get(resident.name) is resident:
                self._models.move_to_end(resident.name)
            resident.last_active = self._clock()
        scheduler.start(seq, prompt_tokens, budget, prompt.sampling, together)
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

    def record_generation(self, resident: ResidentModel, stats: dict) -> None:
        """Tokens and timing of a generation on ``resident`` that produced its last token."""
        with self._state:
            resident.last_generation = self.last_generation = stats

    def generation_ended(self, resident: ResidentModel) -> None:
        """A generation on ``resident`` is over (its sequence was released)."""
        with self._state:
            resident.last_active = self._clock()
            # Most recently used by the end of its last generation too, as the store counts it.
            if self._models.get(resident.name) is resident:
                self._models.move_to_end(resident.name)
