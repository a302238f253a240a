"""Timer-driven traces: the ``periodic`` and ``diurnal`` presets.

Much serverless traffic is invoked on timers (Shahrad et al., *Serverless in
the Wild*, USENIX ATC 2020: in Azure Functions' trace many applications run
on timers or daily rhythms). Here a share of the models (``timer_fraction``)
are timers: each has a period drawn log-uniformly between ``min_period`` and
``max_period`` seconds, a random phase, and each gap is its period times
1 +/- ``jitter`` (uniform). The other models are noise: Poisson arrivals at
``rate`` requests per second together, spread over them evenly, whose rate
follows the daily cycle (``daily_amplitude`` over ``period_seconds``).
``diurnal`` timers run only in their own working hours of each day (a start
between 06:00 and 10:00, an end between 16:00 and 22:00, ``period_seconds``
being the day). The trace lasts ``duration`` seconds, at most ``requests``
requests. Deterministic for a given spec (seed included).
"""

from __future__ import annotations

import math
import random

from model_swap_lab.trace import Request

DAY = 86400.0


def generate_periodic(spec, names: list[str]) -> list[Request]:
    """The timer trace ``spec`` (a ``generate.TraceSpec`` with ``timer_fraction``) over
    ``names``: the first ``timer_fraction`` of them (after a seeded shuffle) are timers."""
    rng = random.Random(spec.seed)
    models = names[:]
    rng.shuffle(models)
    timers = max(1, min(len(models), round(len(models) * spec.timer_fraction)))
    events: list[tuple[float, str]] = []
    for model in models[:timers]:
        period = math.exp(rng.uniform(math.log(spec.min_period), math.log(spec.max_period)))
        hours = None
        if spec.diurnal:
            hours = (rng.uniform(6, 10) / 24, rng.uniform(16, 22) / 24)
        now = rng.uniform(0, period)
        while now < spec.duration:
            if hours is None or _within(now, hours, spec.period_seconds):
                events.append((now, model))
            now += period * (1 + rng.uniform(-spec.jitter, spec.jitter))
    noise = models[timers:]
    if noise and spec.rate > 0:
        now = 0.0
        while True:
            phase = 2 * math.pi * now / spec.period_seconds
            rate = spec.rate * max(0.05, 1 + spec.daily_amplitude * math.sin(phase))
            now += rng.expovariate(rate)
            if now >= spec.duration:
                break
            events.append((now, rng.choice(noise)))
    events.sort()
    return [
        Request(
            round(t, 3),
            model,
            {"prompt_tokens": str(rng.randint(4, 64)), "max_tokens": str(spec.max_tokens)},
        )
        for t, model in events[: spec.requests]
    ]


def _within(now: float, hours: tuple[float, float], day: float) -> bool:
    """Whether ``now`` falls in the working hours (fractions of ``day``)."""
    of_day = (now % day) / day
    return hours[0] <= of_day < hours[1]
