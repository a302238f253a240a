"""Seeded synthetic traces: Zipf popularity, a size mix, bursts, a daily cycle, drift.

``generate`` is deterministic for a given ``TraceSpec`` (seed included).
Popularity: the model at rank r gets weight 1/(r+1)^zipf; the ``alibaba``
preset instead gives 94% of the models (the cold ones) 1.4% of the requests
together, the skew Alibaba reported for production model serving, with Zipf
inside the hot and the cold sets. Arrivals are Poisson with a rate that
follows a sinusoidal daily cycle. Bursts: a random model (or, with
``burst_cold``, one of the less popular half) briefly takes most requests.
Drift: ranks of random models are swapped as the trace goes on (``drift``,
per request), and at each boundary between ``phases`` (equal numbers of
requests) ``phase_swaps`` of the hottest fifth trade ranks with colder models.
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass, replace

from model_swap_lab.periodic import generate_periodic
from model_swap_lab.trace import Request

GIB = 1024**3

# (fraction of models, size in bytes): a fleet of 0.5-14 GB quantized models.
DEFAULT_SIZE_MIX = ((0.5, int(0.6 * GIB)), (0.3, int(2.5 * GIB)), (0.2, int(7.5 * GIB)))
# Serverless-sized models, 200 MB to 2 GB.
SMALL_SIZE_MIX = ((0.25, int(0.2e9)), (0.25, int(0.5e9)), (0.25, int(1e9)), (0.25, int(2e9)))
# A wider fleet, 0.2-16 GB: small adapters-sized models up to a 16 GB one.
WIDE_SIZE_MIX = (
    (0.3, int(0.2e9)),
    (0.3, int(1e9)),
    (0.2, int(4e9)),
    (0.15, int(8e9)),
    (0.05, int(16e9)),
)


@dataclass(frozen=True)
class TraceSpec:
    models: int = 40
    requests: int = 5000
    rate: float = 2.0  # mean requests per second
    zipf: float = 1.0
    size_mix: tuple[tuple[float, int], ...] = DEFAULT_SIZE_MIX
    hot_fraction: float | None = None  # alibaba: 0.06 of the models ...
    hot_share: float = 0.986  # ... get this share of the requests
    burst_probability: float = 0.0  # per request, that a burst starts
    burst_length: int = 30  # requests in a burst
    burst_share: float = 0.7  # of the requests during a burst, for the burst's model
    daily_amplitude: float = 0.0  # 0: flat rate; 0.5: the rate swings +-50% ...
    period_seconds: float = 86400.0  # ... over this period
    drift: float = 0.0  # per request, the probability that two models swap ranks
    phases: int = 1  # equal parts of the trace; popularity changes between them ...
    phase_swaps: int = 0  # ... by this many swaps of a hot model's rank with a cold one's
    burst_cold: bool = False  # bursts on models of the less popular half only
    max_tokens: int = 8
    seed: int = 0
    # Timer-driven traces (``periodic.py``): this share of the models are timers; the rest
    # are Poisson noise at ``rate`` (with the daily cycle). 0: the Poisson generator above.
    timer_fraction: float = 0.0
    min_period: float = 60.0  # timers' periods, log-uniform between these (seconds) ...
    max_period: float = 1800.0
    jitter: float = 0.03  # ... each gap its period times 1 +/- jitter
    duration: float = 8 * 3600.0  # seconds of a timer trace (at most ``requests`` requests)
    diurnal: bool = False  # timers run only in their working hours of each day


PRESETS: dict[str, TraceSpec] = {
    # Zipf(1.0) popularity over mixed sizes: the cost-aware policies' home ground.
    "zipf": TraceSpec(),
    # Alibaba's reported skew: 94% of the models receive ~1.4% of the requests.
    "alibaba": TraceSpec(hot_fraction=0.06, zipf=0.8),
    # Popularity that moves: bursts of cold models, a daily cycle and rank drift.
    "bursty": TraceSpec(
        zipf=0.9, burst_probability=0.004, daily_amplitude=0.5, period_seconds=1800, drift=0.01
    ),
    # No skew at all: every model equally likely (no policy can do much).
    "uniform": TraceSpec(zipf=0.0),
    # Stationary skew over a wide fleet (0.2-16 GB, Zipf 1.1): drift's control, without drift.
    "skewed": TraceSpec(zipf=1.1, size_mix=WIDE_SIZE_MIX),
    # The same fleet whose favourites change: 5 phases, 4 hot/cold rank swaps between
    # them, and bursts on cold models.
    "drift": TraceSpec(
        zipf=1.1,
        size_mix=WIDE_SIZE_MIX,
        phases=5,
        phase_swaps=4,
        burst_probability=0.004,
        burst_cold=True,
    ),
    # Faster change: 10 phases of 8 swaps each, more bursts on cold models.
    "drift-heavy": TraceSpec(
        zipf=1.1,
        size_mix=WIDE_SIZE_MIX,
        phases=10,
        phase_swaps=8,
        burst_probability=0.008,
        burst_cold=True,
    ),
    # Timers (Azure Functions' shape): 3/4 of the models on timers of 1-30 minutes with 3%
    # jitter, the rest Poisson noise; 8 hours, 200 MB-2 GB models.
    "periodic": TraceSpec(
        models=32,
        requests=20000,
        rate=0.0306,
        size_mix=SMALL_SIZE_MIX,
        timer_fraction=0.75,
    ),
    # Daily rhythms: timers of 2-30 minutes only in each one's working hours, noise with a
    # daily cycle; one day.
    "diurnal": TraceSpec(
        models=32,
        requests=20000,
        rate=0.02,
        size_mix=SMALL_SIZE_MIX,
        timer_fraction=0.75,
        min_period=120.0,
        duration=86400.0,
        diurnal=True,
        daily_amplitude=0.8,
    ),
}


def model_names(count: int) -> list[str]:
    width = max(3, len(str(count - 1)))
    return [f"m{index:0{width}d}.gguf" for index in range(count)]


def assign_sizes(names: list[str], spec: TraceSpec) -> dict[str, int]:
    """Sizes from ``spec.size_mix``, shuffled over the models (independent of popularity)."""
    rng = random.Random(f"sizes-{spec.seed}")
    total = sum(fraction for fraction, _ in spec.size_mix)
    sizes: list[int] = []
    for fraction, size in spec.size_mix:
        sizes += [size] * round(len(names) * fraction / total)
    sizes = (sizes + [spec.size_mix[0][1]] * len(names))[: len(names)]
    rng.shuffle(sizes)
    return dict(zip(names, sizes, strict=True))


def _weights(count: int, spec: TraceSpec) -> list[float]:
    def zipf(n: int) -> list[float]:
        raw = [1.0 / (rank + 1) ** spec.zipf for rank in range(n)]
        total = sum(raw)
        return [w / total for w in raw]

    if spec.hot_fraction is None:
        return zipf(count)
    hot = max(1, min(count - 1, round(count * spec.hot_fraction)))
    return [w * spec.hot_share for w in zipf(hot)] + [
        w * (1 - spec.hot_share) for w in zipf(count - hot)
    ]


def validate(spec: TraceSpec) -> TraceSpec:
    """Return ``spec`` if every field is usable, else raise ValueError naming the field."""

    def check(ok: bool, message: str) -> None:
        if not ok:
            raise ValueError(message)

    def finite(value: float) -> bool:
        return isinstance(value, int | float) and math.isfinite(value)

    def probability(field: str) -> None:
        value = getattr(spec, field)
        check(finite(value) and 0 <= value <= 1, f"{field} must be in [0, 1], not {value!r}")

    check(spec.models >= 2, f"models must be >= 2, not {spec.models!r}")
    check(spec.requests >= 1, f"requests must be >= 1, not {spec.requests!r}")
    check(finite(spec.rate) and spec.rate > 0, f"rate must be > 0, not {spec.rate!r}")
    check(finite(spec.zipf) and spec.zipf >= 0, f"zipf must be >= 0, not {spec.zipf!r}")
    check(
        bool(spec.size_mix)
        and all(finite(f) and f >= 0 and size >= 1 for f, size in spec.size_mix)
        and sum(f for f, _ in spec.size_mix) > 0,
        "size_mix must be (fraction >= 0, size >= 1 byte) pairs with fractions summing above 0",
    )
    if spec.hot_fraction is not None:
        check(
            finite(spec.hot_fraction) and 0 < spec.hot_fraction < 1,
            f"hot_fraction must be in (0, 1), not {spec.hot_fraction!r}",
        )
    for field in ("hot_share", "burst_probability", "burst_share", "daily_amplitude", "drift"):
        probability(field)
    check(spec.phases >= 1, f"phases must be >= 1, not {spec.phases!r}")
    check(spec.phase_swaps >= 0, f"phase_swaps must be >= 0, not {spec.phase_swaps!r}")
    check(spec.burst_length >= 1, f"burst_length must be >= 1, not {spec.burst_length!r}")
    check(
        finite(spec.period_seconds) and spec.period_seconds > 0,
        f"period must be > 0 seconds, not {spec.period_seconds!r}",
    )
    check(spec.max_tokens >= 1, f"max_tokens must be >= 1, not {spec.max_tokens!r}")
    probability("timer_fraction")
    check(
        finite(spec.min_period) and 0 < spec.min_period <= spec.max_period,
        f"periods must satisfy 0 < min_period <= max_period, not {spec.min_period!r}",
    )
    check(finite(spec.max_period), f"max_period must be finite, not {spec.max_period!r}")
    check(finite(spec.jitter) and 0 <= spec.jitter < 1, "jitter must be in [0, 1)")
    check(finite(spec.duration) and spec.duration > 0, "duration must be > 0 seconds")
    return spec


def generate(spec: TraceSpec, names: list[str] | None = None) -> list[Request]:
    """The trace ``spec`` describes, over ``names`` (default ``model_names(spec.models)``).

    Raises ValueError for an invalid ``spec`` (see ``validate``)."""
    validate(spec)
    names = list(names or model_names(spec.models))
    if len(names) < 2:
        raise ValueError("a trace needs at least two models")
    if spec.timer_fraction > 0:
        return generate_periodic(spec, names)
    rng = random.Random(spec.seed)
    by_rank = names[:]
    rng.shuffle(by_rank)
    cumulative = []
    running = 0.0
    for weight in _weights(len(names), spec):
        running += weight
        cumulative.append(running)
    requests: list[Request] = []
    now = 0.0
    burst_model, burst_left = None, 0
    hot = max(1, len(names) // 5)
    phase_length = math.ceil(spec.requests / spec.phases)
    for index in range(spec.requests):
        if index and index % phase_length == 0:
            for _ in range(spec.phase_swaps):
                i, j = rng.randrange(hot), rng.randrange(hot, len(names))
                by_rank[i], by_rank[j] = by_rank[j], by_rank[i]
        phase = 2 * math.pi * now / spec.period_seconds
        rate = spec.rate * max(0.05, 1 + spec.daily_amplitude * math.sin(phase))
        now += rng.expovariate(rate)
        if spec.drift and rng.random() < spec.drift:
            i, j = rng.randrange(len(names)), rng.randrange(len(names))
            by_rank[i], by_rank[j] = by_rank[j], by_rank[i]
        if not burst_left and spec.burst_probability and rng.random() < spec.burst_probability:
            pool = by_rank[len(names) // 2 :] if spec.burst_cold else names
            burst_model, burst_left = rng.choice(pool), spec.burst_length
        if burst_left:
            burst_left -= 1
        if burst_left and rng.random() < spec.burst_share:
            model = burst_model
        else:
            rank = bisect.bisect_left(cumulative, rng.random() * running)
            model = by_rank[min(len(names) - 1, rank)]
        extra = {"prompt_tokens": str(rng.randint(4, 64)), "max_tokens": str(spec.max_tokens)}
        requests.append(Request(round(now, 3), model, extra))
    return requests


def spec_for(preset: str, **overrides) -> TraceSpec:
    """A preset with some fields replaced (None values are ignored)."""
    try:
        base = PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown preset {preset!r} (valid: {', '.join(PRESETS)})") from None
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})
