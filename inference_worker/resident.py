"""One model the worker holds in memory: its llama.cpp context, its own lock, and what it cost.

The engine keeps one ``ResidentModel`` per resident name. Each has its own
first-come, first-served lock, so generations on different models run at the
same time while requests for one model queue in arrival order. This module
only holds the bookkeeping and reads the process's memory; the engine decides
when a model is loaded, reloaded or closed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from inference_worker.fair_lock import FairLock


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
    generating: int  # generations holding its context (0 or 1: they take turns)
    queued: int  # callers waiting for its context: generations, an unload or a reload
    last_generation: dict | None  # tokens and timing of its latest generation


class ResidentModel:
    """One loaded llama.cpp context and its lock. Not thread-safe by itself.

    ``lock`` is held by the generation running on ``llm`` and by the engine
    while it closes or reloads it; the other fields are changed by the engine
    under its state lock (counters, times) or while it holds ``lock`` (the
    context and its load figures). ``llm`` is None only while it is being
    reloaded or after it was closed.
    """

    def __init__(self, name: str, now: float):
        self.name = name
        self.lock = FairLock()
        self.llm = None
        self.template = None
        self.estimated_bytes = 0
        self.llama_bytes = 0
        self.rss_load_bytes: int | None = None
        self.load_seconds = 0.0
        self.generating = 0
        self.last_active = now
        self.last_generation: dict | None = None

    def info(self, now: float) -> ResidentInfo:
        return ResidentInfo(
            name=self.name,
            estimated_bytes=self.estimated_bytes,
            llama_bytes=self.llama_bytes,
            rss_load_bytes=self.rss_load_bytes,
            load_seconds=round(self.load_seconds, 6),
            idle_seconds=0.0 if self.generating else round(max(0.0, now - self.last_active), 3),
            generating=self.generating,
            queued=self.lock.waiting,
            last_generation=self.last_generation,
        )
