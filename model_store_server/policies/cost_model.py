"""How long it takes to make a model resident: the cost the cost-aware policies weigh.

``CostModel`` turns a model's size into seconds: pushing the file to the
worker (``push_seconds``) and loading it into memory (``load_seconds``), each
a fixed overhead plus bytes over a rate. The store feeds it what it measures
(``observe_push``, ``observe_load``) so the rates follow this worker as swaps
happen; until the first measurement the documented defaults below apply. The
simulator builds one with fixed rates (its own cost model) and never observes.
Thread-safe; no I/O, no logging.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

# Defaults measured on the development machine (2 cores shared with other jobs, loopback
# HTTP, CPU llama.cpp) with a real model, Gemma 3 270M (Q4_K_M, 253 MB): the rates the store
# learned in the calibration replays of `uv run python benchmarks/policies.py`
# (benchmarks/POLICIES.md, section 1), the mean of three runs (push 551, 896 and 1239 MB/s,
# load 240, 321 and 458 MB/s: the machine's other jobs make them vary), rounded. A load is
# llama.cpp's whole model set-up (mapping the file, building the context), so it is slower
# per byte than the push; tiny random models load at ~10 GB/s and made the simulator
# under-count Gemma swaps 4-6x. Another worker learns its
# own rates as it swaps (`/status` -> explain.cost_model; `simulate --calibrate-from`).
DEFAULT_PUSH_BYTES_PER_S = 900e6
DEFAULT_LOAD_BYTES_PER_S = 340e6
DEFAULT_PUSH_OVERHEAD_S = 0.003
DEFAULT_LOAD_OVERHEAD_S = 0.002
DEFAULT_CALL_OVERHEAD_S = 0.001  # one evict or unload call on the worker
# Weight of a new measurement in the running rate (exponential moving average).
SMOOTHING = 0.3


@dataclass(frozen=True)
class Rates:
    """A snapshot of a cost model's parameters (for ``/status`` and the lab's JSON)."""

    push_bytes_per_s: float
    load_bytes_per_s: float
    push_overhead_s: float
    load_overhead_s: float
    call_overhead_s: float
    push_observations: int = 0
    load_observations: int = 0


class CostModel:
    """Seconds to push and to load a model of a given size; learns rates from observations."""

    def __init__(
        self,
        *,
        push_bytes_per_s: float = DEFAULT_PUSH_BYTES_PER_S,
        load_bytes_per_s: float = DEFAULT_LOAD_BYTES_PER_S,
        push_overhead_s: float = DEFAULT_PUSH_OVERHEAD_S,
        load_overhead_s: float = DEFAULT_LOAD_OVERHEAD_S,
        call_overhead_s: float = DEFAULT_CALL_OVERHEAD_S,
        smoothing: float = SMOOTHING,
    ):
        for name, value in (
            ("push_bytes_per_s", push_bytes_per_s),
            ("load_bytes_per_s", load_bytes_per_s),
        ):
            if value <= 0:
                raise ValueError(f"{name} must be positive")
        for name, value in (
            ("push_overhead_s", push_overhead_s),
            ("load_overhead_s", load_overhead_s),
            ("call_overhead_s", call_overhead_s),
        ):
            if value < 0:
                raise ValueError(f"{name} must not be negative")
        if not 0 < smoothing <= 1:
            raise ValueError("smoothing must be in (0, 1]")
        self._lock = threading.Lock()
        self._rates = Rates(
            push_bytes_per_s, load_bytes_per_s, push_overhead_s, load_overhead_s, call_overhead_s
        )
        self._smoothing = smoothing

    @property
    def rates(self) -> Rates:
        return self._rates

    def push_seconds(self, size: int) -> float:
        """Modelled seconds to push a file of ``size`` bytes to the worker."""
        rates = self._rates
        return rates.push_overhead_s + size / rates.push_bytes_per_s

    def load_seconds(self, size: int) -> float:
        """Modelled seconds for the worker to load a cached file of ``size`` bytes."""
        rates = self._rates
        return rates.load_overhead_s + size / rates.load_bytes_per_s

    def call_seconds(self, calls: int = 1) -> float:
        """Modelled seconds of ``calls`` evict or unload calls on the worker."""
        return calls * self._rates.call_overhead_s

    def observe_push(self, nbytes: int, seconds: float) -> None:
        """A push of ``nbytes`` took ``seconds`` (without the load)."""
        self._observe("push", nbytes, seconds)

    def observe_load(self, nbytes: int, seconds: float) -> None:
        """Loading a cached file of ``nbytes`` took ``seconds``."""
        self._observe("load", nbytes, seconds)

    def _observe(self, kind: str, nbytes: int, seconds: float) -> None:
        with self._lock:
            rates = self._rates
            overhead = getattr(rates, f"{kind}_overhead_s")
            # Too small or too fast to tell a rate apart from the overhead: keep the rate.
            if nbytes <= 0 or seconds <= overhead:
                return
            measured = nbytes / (seconds - overhead)
            old = getattr(rates, f"{kind}_bytes_per_s")
            count = getattr(rates, f"{kind}_observations")
            # The first measurement replaces the default; later ones are smoothed.
            rate = measured if count == 0 else old + self._smoothing * (measured - old)
            self._rates = Rates(
                **{
                    **rates.__dict__,
                    f"{kind}_bytes_per_s": rate,
                    f"{kind}_observations": count + 1,
                }
            )
