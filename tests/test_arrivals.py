"""The arrival histograms' math (model_store_server/policies/arrivals.py), on a fake clock."""

from __future__ import annotations

import json
import random

import pytest

from model_store_server.policies.arrivals import Arrivals, HistogramShape, IdleHistogram, Window


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


def test_a_gap_of_exactly_n_bins_lands_in_bin_n_with_sub_second_bins():
    histogram = IdleHistogram(HistogramShape(bin_seconds=0.1, min_samples=1))
    for t in (0.0, 1.0, 1.3, 1.8):
        histogram.observe(t)
    # gaps 1.0, 0.3 (0.30000000000000004) and 0.5; with floor division 1.0 // 0.1 is 9
    assert histogram.counts == {10: 1, 3: 1, 5: 1}


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


# Values and boundaries, each checked exactly (mutation testing: scripts/mutation.sh).


def test_the_shape_accepts_its_limits_and_refuses_one_past_them():
    assert HistogramShape(bin_seconds=5, range_seconds=5).bins == 1  # one bin: the least
    assert HistogramShape(bin_seconds=1, range_seconds=10.5).bins == 11  # a partial bin counts
    HistogramShape(head_quantile=0.0, tail_quantile=1.0, min_samples=1)
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"^bin_seconds must be > 0, not "):
            HistogramShape(bin_seconds=bad)
    with pytest.raises(ValueError, match=r"^range_seconds must be at least one bin$"):
        HistogramShape(bin_seconds=5, range_seconds=4.9)
    for head, tail in ((-0.01, 0.5), (0.5, 0.5), (0.1, 1.01)):
        with pytest.raises(ValueError, match=r"^quantiles must satisfy 0 <= head < tail <= 1$"):
            HistogramShape(head_quantile=head, tail_quantile=tail)
    with pytest.raises(ValueError, match=r"^min_samples must be >= 1$"):
        HistogramShape(min_samples=0)


def test_a_gap_on_a_bin_edge_goes_to_the_upper_bin_and_the_range_end_is_out():
    histogram = IdleHistogram(HistogramShape(bin_seconds=10, range_seconds=100))
    histogram.observe(0.0)
    assert (histogram.samples, histogram.counts, histogram.mean_gap()) == (0, {}, None)
    for now in (10.0, 19.999, 119.999, 219.999):  # gaps 10, 9.999, 100, 100
        histogram.observe(now)
    assert histogram.counts == {1: 1, 0: 1}
    assert histogram.out_of_range == 2 and histogram.samples == 4
    assert histogram.total_seconds == pytest.approx(19.999)  # out-of-range gaps not summed
    assert histogram.mean_gap() == pytest.approx(19.999 / 2)
    histogram.observe(219.999 + 99.999)  # the last in-range bin
    assert histogram.counts[9] == 1


def test_a_late_report_counts_as_no_idle_time_and_never_moves_last_back():
    histogram = IdleHistogram(HistogramShape(bin_seconds=1))
    histogram.observe(100.0)
    histogram.observe(90.0)
    assert histogram.counts == {0: 1} and histogram.last == 100.0
    histogram.observe(103.5)
    assert histogram.counts == {0: 1, 3: 1} and histogram.last == 103.5


def test_quantiles_count_ranks_exactly():
    histogram = IdleHistogram(HistogramShape(bin_seconds=1, min_samples=1))
    assert histogram.quantile(0.5) is None
    for now in (0, 2, 7, 9):  # gaps 2, 5, 2: bins 2, 5, 2
        histogram.observe(now)
    assert histogram.counts == {2: 2, 5: 1}
    assert histogram.quantile(0.0) == 2  # the first bin holding a gap
    assert histogram.quantile(2 / 3) == 2  # rank 2 is reached in bin 2
    assert histogram.quantile(0.67) == 5
    assert histogram.quantile(1.0) == 5 and histogram.quantile(1.0, upper=True) == 6
    assert histogram.quantile(1.5) == 5  # beyond every gap: the largest bin
    assert histogram.quantile(1.5, upper=True) == 6


def periodic_histogram(shape: HistogramShape, gaps) -> IdleHistogram:
    histogram = IdleHistogram(shape)
    now = 0.0
    histogram.observe(now)
    for gap in gaps:
        now += gap
        histogram.observe(now)
    return histogram


def test_the_window_is_the_head_and_tail_edges_after_the_last_request():
    histogram = periodic_histogram(HistogramShape(bin_seconds=1, min_samples=3), [10.2] * 3)
    assert histogram.why_not() == ""
    assert histogram.window() == Window(histogram.last + 10, histogram.last + 11)


def test_min_samples_is_enough_and_one_fewer_is_not():
    shape = HistogramShape(bin_seconds=1, min_samples=4)
    assert periodic_histogram(shape, [10.0] * 4).why_not() == ""
    few = periodic_histogram(shape, [10.0] * 3)
    assert few.why_not() == "too few idle times (3 < 4)"
    assert few.window() is None


def test_the_out_of_range_share_may_reach_its_limit_but_not_pass_it():
    shape = HistogramShape(bin_seconds=1, range_seconds=100, min_samples=1, max_out_of_range=0.25)
    at_limit = periodic_histogram(shape, [10.0] * 3 + [500.0])  # 1 of 4
    assert at_limit.why_not() == ""
    past = periodic_histogram(shape, [10.0] * 2 + [500.0])  # 1 of 3
    assert past.why_not() == "too many idle times beyond 100s (1)"
    everything_out = HistogramShape(range_seconds=100, min_samples=1, max_out_of_range=1.0)
    assert periodic_histogram(everything_out, [500.0] * 3).why_not() == "no idle time in range"


def test_the_spread_may_reach_its_limit_but_not_pass_it():
    shape = HistogramShape(bin_seconds=1, min_samples=1, max_spread=0.5)
    at_limit = periodic_histogram(shape, [10.5] * 50 + [19.5])  # head 10, tail 20
    assert (at_limit.quantile(0.05), at_limit.quantile(0.99, upper=True)) == (10, 20)
    assert at_limit.why_not() == ""
    past = periodic_histogram(shape, [10.5] * 50 + [20.5])  # head 10, tail 21
    assert past.why_not() == "no pattern: idle times spread from 10s to 21s"
    assert past.window() is None


def test_a_new_idle_time_is_judged_again():
    shape = HistogramShape(bin_seconds=1, range_seconds=100, min_samples=3, max_out_of_range=0.25)
    histogram = periodic_histogram(shape, [10.0] * 3)
    assert histogram.window() is not None
    histogram.observe(histogram.last + 500)  # 1 of 4 out of range: still representative
    assert histogram.window() == Window(histogram.last + 10, histogram.last + 11)
    histogram.observe(histogram.last + 500)  # 2 of 5
    assert histogram.window() is None
    assert histogram.why_not().startswith("too many idle times beyond")


def test_a_histogram_round_trips_exactly_and_drops_what_does_not_fit():
    shape = HistogramShape(bin_seconds=1, range_seconds=10)
    histogram = periodic_histogram(shape, [2.5, 2.5, 7.0, 50.0])
    saved = histogram.to_dict()
    assert saved == {"bins": {"2": 2, "7": 1}, "out_of_range": 1, "total_seconds": 12.0}
    again = IdleHistogram.from_dict(saved, shape)
    assert (again.counts, again.out_of_range, again.total_seconds) == ({2: 2, 7: 1}, 1, 12.0)
    assert again.last is None
    odd = {"bins": {"-1": 2, "3": 0, "4": -1, "9": 1, "10": 4}, "out_of_range": 3}
    read = IdleHistogram.from_dict(odd, shape)
    assert read.counts == {9: 1}
    assert read.out_of_range == 2 + 4 + 3  # a bin outside the range counts as out of it
    assert read.total_seconds == 0.0
    empty = IdleHistogram.from_dict({}, shape)
    assert (empty.counts, empty.out_of_range, empty.total_seconds) == ({}, 0, 0.0)


def test_arrivals_use_the_clock_unless_given_a_time_and_save_every_model():
    clock = FakeClock()
    arrivals = Arrivals(HistogramShape(bin_seconds=2, range_seconds=60), clock)
    clock.now = 5.0
    arrivals.observe("b")
    arrivals.observe("a", now=1.0)
    assert (arrivals.last("a"), arrivals.last("b")) == (1.0, 5.0)
    arrivals.observe("a", now=4.0)
    assert arrivals.get("a").counts == {1: 1}
    assert arrivals.get("nobody") is None
    saved = arrivals.to_dict()
    assert saved == {
        "bin_seconds": 2.0,
        "range_seconds": 60.0,
        "models": {
            "a": {"bins": {"1": 1}, "out_of_range": 0, "total_seconds": 3.0},
            "b": {"bins": {}, "out_of_range": 0, "total_seconds": 0.0},
        },
    }
    assert list(saved["models"]) == ["a", "b"]
    other = Arrivals(HistogramShape(bin_seconds=2, range_seconds=60), FakeClock())
    assert other.load_dict(saved) == 2
    assert other.get("a").counts == {1: 1} and other.get("a").shape is other.shape
    assert Arrivals(HistogramShape(bin_seconds=2, range_seconds=30)).load_dict(saved) == 0
    assert Arrivals(HistogramShape(bin_seconds=2, range_seconds=60)).load_dict({}) == 0
    assert (
        Arrivals(HistogramShape(bin_seconds=2, range_seconds=60)).load_dict(
            {"bin_seconds": 2, "range_seconds": 60}
        )
        == 0
    )


def test_saved_histograms_without_their_bin_width_or_range_are_not_adopted():
    saved = {"models": {"a": {"bins": {"0": 3}}}}
    one_second = HistogramShape(bin_seconds=1, range_seconds=1)  # the smallest valid shape
    assert Arrivals(one_second).load_dict({**saved, "range_seconds": 1}) == 0
    assert Arrivals(one_second).load_dict({**saved, "bin_seconds": 1}) == 0
    assert Arrivals(one_second).load_dict({**saved, "bin_seconds": 1, "range_seconds": 1}) == 1


def test_the_first_bin_round_trips():
    shape = HistogramShape(bin_seconds=10, range_seconds=100)
    histogram = periodic_histogram(shape, [3.0, 4.0, 15.0])
    assert histogram.counts == {0: 2, 1: 1}
    again = IdleHistogram.from_dict(histogram.to_dict(), shape)
    assert (again.counts, again.out_of_range) == ({0: 2, 1: 1}, 0)


def test_quantiles_of_single_gaps_in_wider_bins():
    histogram = IdleHistogram(HistogramShape(bin_seconds=2, min_samples=1))
    for now in (0, 4, 14):  # gaps 4 and 10: one each in bins 2 and 5
        histogram.observe(now)
    assert histogram.counts == {2: 1, 5: 1}
    assert histogram.quantile(0.0) == 4  # the first bin, holding one gap
    assert histogram.quantile(0.5) == 4 and histogram.quantile(0.51) == 10
    assert histogram.quantile(1.5) == 10 and histogram.quantile(1.5, upper=True) == 12
