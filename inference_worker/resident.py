"""One model the worker holds in memory: its llama.cpp model, its batch scheduler, its cost.

The engine keeps one ``ResidentModel`` per resident name. Each has its own
batch scheduler (``inference_worker/batch.py``), so generations on different
models run at the same time while requests for one model share its decode
steps, and queue in arrival order beyond its sequences. This module only holds
the bookkeeping and reads the process's memory; the engine decides when a
model is loaded, reloaded or closed.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass


def rss_bytes() -> int | None:
    """The process's resident set size (``/proc/self/statm``), or None where there is none."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ResidentInfo:
    """What ``GET /status`` reports of one resident model (``resident`` list)."""

    name: str
    estimated_bytes: int  # model_swap.footprint's estimate for the worker's N_CTX
    llama_bytes: int  # the buffer sizes llama.cpp logged while loading it
    rss_load_bytes: int | None  # growth of the process's RSS across the load
    load_seconds: float
    idle_seconds: float  # since its last load or generation ended; 0 while generating
    generating: int  # generations holding one of its sequences
    queued: int  # generations waiting for a free sequence, and callers waiting for a reload
    parallel: int  # its sequences
    kv_tokens: int  # KV cells its running sequences hold now (llama.cpp's count)
    cached_tokens: int  # KV cells its free sequences keep for prefix reuse
    prompt_tokens: int  # prompt tokens of the generations admitted since it was loaded
    reused_tokens: int  # of those, found in kept KV cells instead of evaluated
    kept_prompts: int  # prompt states its host-memory prompt cache knows (in memory or on disk)
    kept_bytes: int  # of those, the bytes held in host memory (at most KV_CACHE_BYTES)
    restored_tokens: int  # prompt tokens restored from kept states instead of evaluated
    last_generation: dict | None  # tokens and timing of its latest generation


class ResidentModel:
    """One loaded llama.cpp model and its scheduler. Not thread-safe by itself.

    ``swap`` is held by the engine while it closes or reloads the model (one
    at a time); the other fields are changed by the engine under its state
    lock (counters, times, the flags) or while it holds ``swap`` (the model,
    its scheduler and its load figures). ``llm`` is None only while it is
    being reloaded or after it was closed.
    """

    def __init__(self, name: str, now: float):
        self.name = name
        self.swap = threading.Lock()
        self.llm = None
        self.template = None
        self.scheduler = None
        self.prompts = None  # its host-memory prompt cache (inference_worker/kv_cache.py)
        self.kv_tag = None  # what its saved prompt states are tagged with (kv_disk.py)
        self.unloading = False
        self.reloading = False
        self.waiting = 0  # callers blocked on this model: begin during a reload, unload, reload
        self.estimated_bytes = 0
        self.llama_bytes = 0
        self.rss_load_bytes: int | None = None
        self.load_seconds = 0.0
        self.last_active = now
        self.last_generation: dict | None = None

    def info(self, now: float) -> ResidentInfo:
        scheduler, prompts = self.scheduler, self.prompts
        generating = scheduler.running if scheduler else 0
        return ResidentInfo(
            name=self.name,
            estimated_bytes=self.estimated_bytes,
            llama_bytes=self.llama_bytes,
            rss_load_bytes=self.rss_load_bytes,
            load_seconds=round(self.load_seconds, 6),
            idle_seconds=0.0 if generating else round(max(0.0, now - self.last_active), 3),
            generating=generating,
            queued=(scheduler.queued if scheduler else 0) + self.waiting,
            parallel=scheduler.parallel if scheduler else 0,
            kv_tokens=scheduler.kv_tokens if scheduler else 0,
            cached_tokens=scheduler.cached_tokens if scheduler else 0,
            prompt_tokens=scheduler.prompt_tokens if scheduler else 0,
            reused_tokens=scheduler.reused_tokens if scheduler else 0,
            kept_prompts=len(prompts.entries()) if prompts else 0,
            kept_bytes=prompts.bytes_in_memory if prompts else 0,
            restored_tokens=prompts.restored_tokens if prompts else 0,
            last_generation=self.last_generation,
        )
