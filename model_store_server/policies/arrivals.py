"""Arrival histograms: per model, how long it stays idle between requests.

``IdleHistogram`` holds one model's idle times (the gaps between its
requests) in bounded bins: ``bin_seconds`` wide up to ``range_seconds``
(by default 1 s bins up to 4 hours, kept sparse), plus a count of the gaps
longer than that. From it come the quantiles of the idle time and the
*window* in which the model's next request is expected: from the head
quantile to the tail quantile after its last request (Shahrad et al.,
*Serverless in the Wild*, USENIX ATC 2020: a pre-warm window and a
keep-alive window from a per-application idle-time histogram).

A histogram is *representative* when it has enough gaps, few of them out of
range, and its head and tail are close together relative to the tail (a
pattern, like a timer with jitter; a Poisson model's idle times spread from
near zero to several times their mean and are not). When it is not, nothing
is predicted and the configured cache policy stays in charge.

``Arrivals`` keeps one histogram per model, learns from ``observe(model)``
at the time of an injected clock, and round-trips through ``to_dict`` /
``from_dict`` (the store keeps it in its state directory). Pure: no I/O, no
logging. Not thread-safe: callers hold a lock.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]

BIN_SECONDS = 1.0
RANGE_SECONDS = 4 * 3600.0
HEAD_QUANTILE = 0.05
TAIL_QUANTILE = 0.99
MIN_SAMPLES = 6  # 4 let a few Poisson models look periodic by chance (benchmarks: zipf, 30%)
MAX_OUT_OF_RANGE = 0.25  # share of gaps longer than the range
MAX_SPREAD = 0.5  # (tail - head) / tail: above it, idle times are too spread to predict


@dataclass(frozen=True)
class HistogramShape:
    """How idle times are binned and when a histogram counts as representative."""

    bin_seconds: float = BIN_SECONDS
    range_seconds: float = RANGE_SECONDS
    head_quantile: float = HEAD_QUANTILE
    tail_quantile: float = TAIL_QUANTILE
    min_samples: int = MIN_SAMPLES
    max_out_of_range: float = MAX_OUT_OF_RANGE
    max_spread: float = MAX_SPREAD

    def __post_init__(self) -> None:
        if not (self.bin_seconds > 0 and math.isfinite(self.bin_seconds)):
            raise ValueError(f"bin_seconds must be > 0, not {self.bin_seconds!r}")
        if not self.range_seconds >= self.bin_seconds:
            raise ValueError("range_seconds must be at least one bin")
        if not 0 <= self.head_quantile < self.tail_quantile <= 1:
            raise ValueError("quantiles must satisfy 0 <= head < tail <= 1")
        if self.min_samples < 1:
            raise ValueError("min_samples must be >= 1")

    @property
    def bins(self) -> int:
        return math.ceil(self.range_seconds / self.bin_seconds)


@dataclass(frozen=True)
class Window:
    """When the next request is expected: between ``start`` and ``end`` (clock times)."""

    start: float
    end: float


class IdleHistogram:
    """One model's idle times in bins (see the module docstring)."""

    def __init__(self, shape: HistogramShape = HistogramShape()):
        self.shape = shape
        self.counts: dict[int, int] = {}  # bin index -> gaps in it (sparse)
        self.out_of_range = 0
        self.total_seconds = 0.0  # sum of the in-range gaps (for the mean)
        self.last: float | None = None  # the last request's time
        self._shape_cache: tuple[str, float | None, float | None] | None = None

    @property
    def samples(self) -> int:
        """Gaps seen, in range or not."""
        return sum(self.counts.values()) + self.out_of_range

    def observe(self, now: float) -> None:
        """A request at ``now``: the gap since the previous one is binned."""
        if self.last is not None:
            gap = max(0.0, now - self.last)
            # true division, then floor: 1.0 // 0.1 is 9.0 (the float 0.1 is a hair over it)
            index = math.floor(gap / self.shape.bin_seconds)
            if index < self.shape.bins:
                self.counts[index] = self.counts.get(index, 0) + 1
                self.total_seconds += gap
            else:
                self.out_of_range += 1
            self._shape_cache = None
        self.last = now if self.last is None else max(self.last, now)

    def quantile(self, q: float, *, upper: bool = False) -> float | None:
        """The idle time at quantile ``q`` of the in-range gaps: its bin's lower edge
        (``upper``: its upper edge). None without in-range gaps."""
        in_range = sum(self.counts.values())
        if not in_range:
            return None
        rank = q * in_range
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank and seen > 0:
                return (index + (1 if upper else 0)) * self.shape.bin_seconds
        return (max(self.counts) + (1 if upper else 0)) * self.shape.bin_seconds

    def mean_gap(self) -> float | None:
        """The mean in-range idle time (None without one)."""
        in_range = sum(self.counts.values())
        return self.total_seconds / in_range if in_range else None

    def _judged(self) -> tuple[str, float | None, float | None]:
        """(why not representative, head, tail), computed once per new idle time."""
        if self._shape_cache is None:
            head = self.quantile(self.shape.head_quantile)
            tail = self.quantile(self.shape.tail_quantile, upper=True)
            self._shape_cache = (self._why_not(head, tail), head, tail)
        return self._shape_cache

    def why_not(self) -> str:
        """Why this histogram predicts nothing ("" when it is representative)."""
        return self._judged()[0]

    def _why_not(self, head: float | None, tail: float | None) -> str:
        why = self._why_no_keep(head, tail)
        if not why and tail - head > self.shape.max_spread * tail:
            return f"no pattern: idle times spread from {head:g}s to {tail:g}s"
        return why

    def _why_no_keep(self, head: float | None, tail: float | None) -> str:
        shape, samples = self.shape, self.samples
        if samples < shape.min_samples:
            return f"too few idle times ({samples} < {shape.min_samples})"
        if self.out_of_range > shape.max_out_of_range * samples:
            return f"too many idle times beyond {shape.range_seconds:g}s ({self.out_of_range})"
        if head is None or tail is None:
            return "no idle time in range"
        return ""

    def keep_window(self) -> Window | None:
        """From the head to the tail after the last request, spread or not (the keep-alive
        window of Shahrad et al.); None without enough idle times, too many beyond the range
        or none in range (``why_not``'s first tests)."""
        _, head, tail = self._judged()
        if self.last is None or self._why_no_keep(head, tail):
            return None
        return Window(self.last + head, self.last + tail)

    def window(self) -> Window | None:
        """The next request's expected window after the last one; None if not representative."""
        why, head, tail = self._judged()
        if self.last is None or why:
            return None
        return Window(self.last + head, self.last + tail)

    def to_dict(self) -> dict:
        return {
            "bins": {str(index): count for index, count in sorted(self.counts.items())},
            "out_of_range": self.out_of_range,
            "total_seconds": self.total_seconds,
        }

    @classmethod
    def from_dict(cls, data: dict, shape: HistogramShape) -> IdleHistogram:
        """A histogram from ``to_dict``; bins are re-read at ``shape``'s width only if it
        matches the saved one (the caller checks), gaps beyond the range count as out."""
        histogram = cls(shape)
        for key, count in data.get("bins", {}).items():
            index, count = int(key), int(count)
            if count <= 0:
                continue
            if 0 <= index < shape.bins:
                histogram.counts[index] = count
            else:
                histogram.out_of_range += count
        histogram.out_of_range += int(data.get("out_of_range", 0))
        histogram.total_seconds = float(data.get("total_seconds", 0.0))
        histogram._shape_cache = None
        return histogram


class Arrivals:
    """Every model's ``IdleHistogram``, learned from the requests seen at ``clock``'s time."""

    def __init__(self, shape: HistogramShape = HistogramShape(), clock: Clock = time.monotonic):
        self.shape = shape
        self.clock = clock
        self.histograms: dict[str, IdleHistogram] = {}

    def observe(self, model: str, now: float | None = None) -> None:
        """A request for ``model`` arrived (now, unless ``now`` is given)."""
        histogram = self.histograms.get(model)
        if histogram is None:
            histogram = self.histograms[model] = IdleHistogram(self.shape)
        histogram.observe(self.clock() if now is None else now)

    def get(self, model: str) -> IdleHistogram | None:
        return self.histograms.get(model)

    def window(self, model: str) -> Window | None:
        histogram = self.histograms.get(model)
        return histogram.window() if histogram is not None else None

    def last(self, model: str) -> float | None:
        histogram = self.histograms.get(model)
        return histogram.last if histogram is not None else None

    def to_dict(self) -> dict:
        """The histograms, without the last request times (a restarted store's clock is
        another one): after a restart each model predicts again from its next request."""
        return {
            "bin_seconds": self.shape.bin_seconds,
            "range_seconds": self.shape.range_seconds,
            "models": {name: h.to_dict() for name, h in sorted(self.histograms.items())},
        }

    def load_dict(self, data: dict) -> int:
        """Adopt saved histograms (``to_dict``) if binned as ``shape`` bins; returns how
        many models were adopted (0 when the bins differ: they are not comparable)."""
        if (
            float(data.get("bin_seconds", -1)) != self.shape.bin_seconds
            or float(data.get("range_seconds", -1)) != self.shape.range_seconds
        ):
            return 0
        models = data.get("models", {})
        for name, saved in models.items():
            self.histograms[name] = IdleHistogram.from_dict(saved, self.shape)
        return len(models)
