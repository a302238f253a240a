"""How many llama.cpp threads one decode step gets: a pure rule, and the CPU reading it needs.

llama.cpp's CPU backend splits every operation of a step across its threads
and waits at a barrier after each one: a step with N threads is only as fast
as the slowest of them. Measured with ``benchmarks/batch_steps.py`` (figures in
docs/performance.md, "Threads per step"):

- On idle CPUs more threads pay for any step of a real model (Gemma 3 270M's
  one-token step: 25 tok/s on 1 thread, 40 on 2 of 2 cores).
- When other processes use the CPUs, a thread that is not running stalls the
  others at every barrier: the same steps take 2-40x longer on 2 threads than
  on 1 (a tiny model's 32-token chunk 1.1 ms on 1 thread, 40 ms on 2).
- Steps of a tiny model (a few MiB of weights) gain nothing from a second
  thread and lose the team's start and spin-wait, which another resident
  model's loop then pays for.

- Beside a light load (one process using up to half a CPU, such as the store
  relaying the stream and its client reading it) a second thread still pays.

So ``step_threads`` gives a step as many threads as there are CPUs at least half
idle (``CpuMeter.spare``, over the last half second, less the other decode loops
of this process), one for a small step of a tiny model, and never more than the
CPUs this process may use; ``N_THREADS`` fixes the count instead.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# A model with less weight than this is "tiny": its steps of up to SMALL_STEP_TOKENS tokens
# take well under a millisecond, less than waking a second thread costs.
TINY_MODEL_BYTES = 64 * 1024 * 1024
SMALL_STEP_TOKENS = 32
# A CPU counts as spare when at least this much of it was idle: beside one process using up
# to half a CPU (the store relaying a stream, its client), Gemma 3 270M's one-sequence steps
# were 10-37% faster on 2 threads than on 1; beside one using 80%, 1 thread was faster
# (32.1 against 37.9 ms; benchmarks/BATCH_STEPS.md, "Threads beside a light load").
SPARE_FRACTION = 0.5
# Seconds between two readings of /proc/stat (a step reads the last value).
WINDOW = 0.5


def step_threads(*, tokens: int, model_bytes: int, cpus: int, spare: float, fixed: int = 0) -> int:
    """Threads for one llama_decode of ``tokens`` tokens on a model of ``model_bytes``.

    ``cpus``: the CPUs this process may use; ``spare``: CPUs other work left idle
    lately (``CpuMeter.spare``); ``fixed``: N_THREADS (0: choose). Pure.
    """
    if fixed:
        return fixed
    if model_bytes < TINY_MODEL_BYTES and tokens <= SMALL_STEP_TOKENS:
        return 1
    usable = int(spare + 1 - SPARE_FRACTION)
    return max(1, min(cpus, usable))


def usable_cpus() -> int:
    """The CPUs this process may use (its affinity mask; CPU_AFFINITY sets it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _read_stat() -> tuple[float, float] | None:
    """(busy, total) jiffies of every CPU from /proc/stat, or None where there is none."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is counted in user already
    return total - idle, total


def _read_self() -> float | None:
    """This process's user + system jiffies (/proc/self/stat), or None."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return float(int(fields[11]) + int(fields[12]))
    except (OSError, ValueError, IndexError):
        return None


class CpuMeter:
    """CPUs left idle by other processes lately, and this process's decode loops. Thread-safe.

    One per engine, shared by its models' schedulers. ``spare`` re-reads /proc at
    most every ``window`` seconds; without /proc it reports every CPU as spare.
    """

    def __init__(
        self,
        *,
        cpus: int | None = None,
        window: float = WINDOW,
        clock: Callable[[], float] = time.monotonic,
        read_stat: Callable[[], tuple[float, float] | None] = _read_stat,
        read_self: Callable[[], float | None] = _read_self,
    ):
        self.cpus = cpus or os.cpu_count() or 1  # all of the machine's: /proc/stat counts them
        self._window = window
        self._clock = clock
        self._read_stat = read_stat
        self._read_self = read_self
        self._lock = threading.Lock()
        self._last = (clock(), read_stat(), read_self())
        self._spare = float(self.cpus)
        self._decoding = 0

    def spare(self) -> float:
        """CPUs other processes left idle over the last window, less the decode loops of
        this process running now (each counts one CPU); called before a loop's own decode."""
        with self._lock:
            now = self._clock()
            if now - self._last[0] >= self._window:
                self._update(now)
            return max(0.0, self._spare - self._decoding)

    def _update(self, now: float) -> None:
        stat, own = self._read_stat(), self._read_self()
        _, stat0, own0 = self._last
        self._last = (now, stat, own)
        if stat is None or stat0 is None or own is None or own0 is None:
            return
        total = stat[1] - stat0[1]
        if total <= 0:
            return
        # Jiffies of every CPU over the window: busy ones minus this process's are others'.
        others = max(0.0, (stat[0] - stat0[0]) - (own - own0)) / total * self.cpus
        self._spare = max(0.0, self.cpus - others)

    @contextmanager
    def decoding(self) -> Iterator[None]:
        """Around one llama_decode: the other loops of this process see it as a busy CPU."""
        with self._lock:
            self._decoding += 1
        try:
            yield
        finally:
            with self._lock:
                self._decoding -= 1
