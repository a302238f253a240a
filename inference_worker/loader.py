"""Bringing a model file into memory as a resident model, and taking it out.

``Loader.load_into`` creates the llama.cpp model, its serving context and batch
scheduler (``inference_worker/batch.py``) and its host-memory prompt cache
(``inference_worker/kv_cache.py``, with the states saved on disk indexed,
``inference_worker/kv_disk.py``), and measures what the load cost. ``close``
frees them, saving the model's kept prompt states to disk first. The engine
(``inference_worker/engine.py``) decides when either happens.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
from llama_cpp import Llama

from inference_worker import llama_log, prefault
from inference_worker.batch import BatchScheduler, BatchStats
from inference_worker.chat import ChatTemplate
from inference_worker.kv_cache import KeptPrompt, PromptCache
from inference_worker.kv_disk import KvDisk
from inference_worker.prefix import kv_streams
from inference_worker.resident import ResidentModel, rss_bytes
from inference_worker.threads import CpuMeter
from model_swap import footprint

logger = logging.getLogger(__name__)

# Reads a model's header for its footprint estimate while llama.cpp loads it (loads run
# one at a time in the process, so one thread serves every engine).
_ESTIMATOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="footprint-estimate")
# The context llama_cpp.Llama creates for itself; the scheduler makes the one that serves,
# so this one is kept as small as llama.cpp allows and freed right after the load.
_PLACEHOLDER_CTX = 16


class ModelLoadError(Exception):
    """llama.cpp could not load the file; the message says why."""


@dataclass(frozen=True)
class LoadResult:
    name: str
    seconds: float
    estimated_bytes: int


# One for the process: two engines in one process (tests) must not measure each other's loads.
LOAD_LOCK = threading.Lock()


class Loader:
    """How the engine's models are loaded: llama.cpp settings, footprint estimates (cached
    per file version), prompt caches. Thread-safe; loads themselves are serialized by the
    caller (LOAD_LOCK)."""

    def __init__(
        self,
        *,
        n_gpu_layers: int,
        n_ctx: int,
        parallel: int,
        prefix_cache: bool,
        n_threads: int,
        batch_stats: BatchStats,
        cpu_meter: CpuMeter,
        kv_cache_bytes: int = 0,
        kv_disk: KvDisk | None = None,
    ):
        self.n_gpu_layers = n_gpu_layers
        self.n_ctx = n_ctx
        self.parallel = parallel
        self.prefix_cache = prefix_cache
        self.n_threads = n_threads
        self.batch_stats = batch_stats
        self.cpu_meter = cpu_meter
        self.kv_streams = kv_streams(parallel, prefix_cache)
        # Host memory each resident model's prompt cache may hold (only with prefix reuse).
        self.kv_cache_bytes = kv_cache_bytes if prefix_cache else 0
        self.kv_disk = kv_disk
        self._lock = threading.Lock()
        self._estimates: dict[tuple, footprint.Footprint] = {}  # per file version
        # Whether contexts' KV caches are in host memory (inference_worker/prefault.py).
        self.prefault = prefault.wanted(
            gpu_offload=bool(llama_cpp.llama_supports_gpu_offload()), n_gpu_layers=n_gpu_layers
        )
        self.last_prefault: prefault.Prefault | None = None  # the last load's region

    def estimate(self, path: Path) -> int:
        """``path``'s memory once resident: the footprint estimate and its prompt cache."""
        return self._footprint(path) + self.kv_cache_bytes

    def _tag(self, path: Path) -> dict:
        return self.kv_disk.tag(path, {"n_ctx": self.n_ctx, "streams": self.kv_streams})

    def _reader(self, prompts: PromptCache | None):
        """How the scheduler reads a state saved on disk back into ``prompts`` (None: none)."""
        if prompts is None or self.kv_disk is None:
            return None
        disk = self.kv_disk

        def read(entry: KeptPrompt) -> bytearray | None:
            data = disk.read(entry)
            if data is not None:
                prompts.loaded(entry, data)
            return data

        return read

    def close(self, resident: ResidentModel) -> None:
        """Free ``resident``'s context once its generations are over, its kept prompt states
        saved to disk first (with a disk budget). The engine closes the model itself."""
        kept = resident.scheduler.close()
        prompts, disk = resident.prompts, self.kv_disk
        if prompts is not None and resident.kv_tag is not None and disk.budget:
            states = [(e.tokens, e.data) for e in prompts.entries() if e.path is None and e.data]
            try:
                disk.save(resident.name, resident.kv_tag, [*states, *kept])
            except Exception:  # the model must close whatever the disk does
                logger.exception("could not save the prompt states of %s", resident.name)

    def _footprint(self, path: Path) -> int:
        """``path``'s footprint estimate with the KV of ``kv_streams`` sequences of N_CTX."""
        found = self._estimate_of(path)
        return path.stat().st_size if found is None else found.total_bytes

    def _kv_bytes(self, path: Path) -> int:
        """The KV cache the serving context of ``path`` will clear (0: unknown)."""
        found = self._estimate_of(path)
        return 0 if found is None else found.kv_bytes

    def _estimate_of(self, path: Path) -> footprint.Footprint | None:
        """``path``'s footprint, cached per file version; None if it cannot be estimated."""
        try:
            st = path.stat()
            key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns, self.n_ctx, self.kv_streams)
            with self._lock:
                if key in self._estimates:
                    return self._estimates[key]
            estimated = footprint.estimate(path, self.n_ctx, n_seq=self.kv_streams)
        except (footprint.FootprintError, OSError) as err:  # llama.cpp reads it: unlikely
            logger.warning("no footprint estimate for %s (%s); counting its file size", path, err)
            return None
        with self._lock:
            # Forget other versions of this path: one entry per file the cache holds.
            for old in [k for k in self._estimates if k[0] == key[0]]:
                del self._estimates[old]
            self._estimates[key] = estimated
        return estimated

    def load_into(self, resident: ResidentModel, path: Path) -> LoadResult:
        """Create ``resident``'s model and scheduler from ``path`` (the caller holds LOAD_LOCK)."""
        name = resident.name
        started = time.perf_counter()
        # The estimate reads the file's header (~70 ms for Gemma 3 270M): once per file
        # version, and beside llama.cpp's load rather than after it.
        estimating = _ESTIMATOR.submit(self.estimate, path)
        before = rss_bytes()
        # The KV cache's memory, faulted in on another thread while llama.cpp parses the file
        # (its size from the estimate above, once that has read the header).
        early = None
        if self.prefault:
            early = prefault.Prefault(lambda: estimating.result() and self._kv_bytes(path))
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
            finally:
                if early is not None:  # given back right before the context takes it
                    early.release()
                    self.last_prefault = early
        llm._ctx.close()  # the placeholder: the scheduler's context serves
        prompts = PromptCache(self.kv_cache_bytes) if self.prefix_cache else None
        # The version it had when loaded: a new version may replace the file before it closes.
        tag = self._tag(path) if prompts is not None and self.kv_disk is not None else None
        if tag is not None:
            self.kv_disk.index(name, tag, prompts)
        resident.prompts, resident.kv_tag = prompts, tag
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
                    prompts=prompts,
                    load_state=self._reader(prompts),
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
        logger.info(
            "loaded %s in %.3fs (n_gpu_layers=%d, %d sequences of %d tokens; estimated %.1f MiB, "
            "llama.cpp %.1f MiB, RSS %+.1f MiB, KV prefaulted %.1f MiB)",
            name,
            seconds,
            self.n_gpu_layers,
            self.parallel,
            self.n_ctx,
            estimated / llama_log.MIB,
            llama_bytes / llama_log.MIB,
            (resident.rss_load_bytes or 0) / llama_log.MIB,
            (early.touched if early is not None else 0) / llama_log.MIB,
        )
        return LoadResult(name, seconds, estimated)
