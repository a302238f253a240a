"""The arrival histograms' math (model_store_server/policies/arrivals.py), on a fake clock."""

from __future__ import annotations

import json
import random

import pytest

from model_store_server.policies.arrivals import Arrivals, HistogramShape, IdleHistogram


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def periodic(arrivals: Arrivals, clock: FakeClock, model: str, period: float, n: int, jitter=0.0):
    rng = random.Random(1)
    for _ in range(n):
        clock.now += period * (1 + rng.uniform(-jitter, jitter))
        arrivals.observe(model)


def test_gaps_are_binned_and_long_ones_counted_apart():
    clock = FakeClock()
    arrivals = Arrivals(HistogramShape(bin_seconds=10, range_seconds=100), clock)
    for t in (0, 5, 30, 34, 500):
        clock.now = t
        arrivals.observe("a")
    histogram = arrivals.get("a")
    # gaps 5, 25, 4, 466: bins 0, 2, 0 and one out of range
    assert histogram.counts == {0: 2, 2: 1}
    assert histogram.out_of_range == 1
    assert histogram.samples == 4
    assert histogram.last == 500
    assert histogram.mean_gap() == pytest.approx((5 + 25 + 4) / 3)


def test_quantiles_are_bin_edges():
    histogram = IdleHistogram(HistogramShape(bin_seconds=1, min_samples=1))
    for t in (0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100.5):
        histogram.observe(t)
    # nine gaps of 10 s (bin 10) and one of 10.5 s (bin 10 too)
    assert histogram.quantile(0.05) == 10
    assert histogram.quantile(0.99, upper=True) == 11


def test_timer_window_follows_the_last_request():
    clock = FakeClock()
    arrivals = Arrivals(HistogramShape(), clock)
    periodic(arrivals, clock, "timer", 120, 20, jitter=0.03)
    window = arrivals.window("timer")
    last = arrivals.last("timer")
    assert window is not None
    assert last + 110 <= window.start <= last + 120 <= window.end <= last + 125


def test_too_few_samples_predict_nothing():
    clock = FakeClock()
    arrivals = Arrivals(HistogramShape(min_samples=4), clock)
    periodic(arrivals, clock, "a", 60, 4)  # 4 requests: 3 gaps
    assert arrivals.window("a") is None
    assert "too few" in arrivals.get("a").why_not()
    clock.now += 60
    arrivals.observe("a")
    assert arrivals.window("a") is not None


def test_gaps_out_of_range_predict_nothing():
    clock = FakeClock()
    arrivals = Arrivals(HistogramShape(range_seconds=600, max_out_of_range=0.25), clock)
    periodic(arrivals, clock, "a", 60, 10)
    for _ in range(5):  # 5 of 14 gaps are longer than the range
        clock.now += 3600
        arrivals.observe("a")
    assert arrivals.window("a") is None
    assert "beyond" in arrivals.get("a").why_not()


def test_poisson_arrivals_have_no_pattern():
    clock = FakeClock()
    arrivals = Arrivals(HistogramShape(), clock)
    rng = random.Random(3)
    for _ in range(200):
        clock.now += rng.expovariate(1 / 30)
        arrivals.observe("p")
    assert arrivals.window("p") is None
    assert "no pattern" in arrivals.get("p").why_not()


def test_keep_window_allows_a_spread_but_not_too_few_or_out_of_range():
    clock = FakeClock()
    arrivals = Arrivals(HistogramShape(bin_seconds=1, range_seconds=100), clock)
    rng = random.Random(3)
    for _ in range(200):
        clock.now += min(rng.expovariate(1 / 30), 99)
        arrivals.observe("p")
    window = arrivals.get("p").keep_window()  # Poisson: no window, but a keep window
    assert arrivals.window("p") is None
    assert window.start == clock.now + arrivals.get("p").quantile(0.05)
    assert window.end == clock.now + arrivals.get("p").quantile(0.99, upper=True)
    for _ in range(5):
        arrivals.observe("few")
        clock.now += 10
    assert arrivals.get("few").keep_window() is None  # 4 idle times
    for _ in range(10):
        arrivals.observe("far")
        clock.now += 500
    assert arrivals.get("far").keep_window() is None  # every gap beyond the range


def test_unknown_model_has_no_window():
    arrivals = Arrivals(HistogramShape(), FakeClock())
    assert arrivals.window("nobody") is None
    assert arrivals.last("nobody") is None


def test_round_trip_keeps_the_bins_but_not_the_clock():
    clock = FakeClock()
    arrivals = Arrivals(HistogramShape(bin_seconds=2), clock)
    periodic(arrivals, clock, "a", 30, 10)
    saved = json.loads(json.dumps(arrivals.to_dict()))
    restored = Arrivals(HistogramShape(bin_seconds=2), FakeClock())
    assert restored.load_dict(saved) == 1
    assert restored.get("a").counts == arrivals.get("a").counts
    assert restored.last("a") is None  # a new clock: predicts from the next request
    restored.observe("a", now=1000.0)
    window = restored.window("a")
    assert window is not None and 1028 <= window.start <= 1030


def test_histograms_binned_otherwise_are_not_adopted():
    clock = FakeClock()
    arrivals = Arrivals(HistogramShape(bin_seconds=2), clock)
    periodic(arrivals, clock, "a", 30, 10)
    other = Arrivals(HistogramShape(bin_seconds=1), FakeClock())
    assert other.load_dict(arrivals.to_dict()) == 0
    assert other.get("a") is None


def test_shape_is_validated():
    with pytest.raises(ValueError, match="bin_seconds"):
        HistogramShape(bin_seconds=0)
    with pytest.raises(ValueError, match="quantiles"):
        HistogramShape(head_quantile=0.9, tail_quantile=0.5)
