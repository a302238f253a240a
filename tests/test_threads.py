"""The thread rule of each decode step (``inference_worker/threads.py``): pure, per step shape."""

from __future__ import annotations

import pytest

from inference_worker.threads import TINY_MODEL_BYTES, CpuMeter, step_threads

GEMMA = 253 * 1024 * 1024  # Gemma 3 270M Q4_K_M
TINY = 4 * 1024 * 1024


@pytest.mark.parametrize(
    ("tokens", "model_bytes", "cpus", "spare", "expected"),
    [
        # Idle CPUs: every step of a real model takes all of them.
        (1, GEMMA, 2, 2.0, 2),  # one-token step
        (4, GEMMA, 2, 2.0, 2),  # four sequences' tokens
        (256, GEMMA, 2, 2.0, 2),  # a prompt chunk
        (1, GEMMA, 16, 16.0, 16),
        # Other work on the CPUs: only the ones left idle, at least one.
        (1, GEMMA, 2, 1.0, 1),
        (4, GEMMA, 2, 1.2, 1),
        (1, GEMMA, 2, 1.49, 1),  # half a CPU taken by others: that one is busy
        (256, GEMMA, 2, 0.1, 1),
        (4, GEMMA, 16, 9.8, 10),
        (4, GEMMA, 16, 9.4, 9),
        (4, GEMMA, 2, 1.8, 2),
        (1, GEMMA, 2, 1.5, 2),  # half idle counts as a CPU (a store relaying the stream)
        # Never more than the CPUs this process may use (CPU_AFFINITY).
        (4, GEMMA, 1, 2.0, 1),
        # A tiny model's small steps: one thread, idle or not; its prompt chunks: the rule.
        (1, TINY, 2, 2.0, 1),
        (8, TINY, 2, 2.0, 1),
        (32, TINY, 2, 2.0, 1),
        (33, TINY, 2, 2.0, 2),
        (256, TINY, 2, 1.0, 1),
        (1, TINY_MODEL_BYTES, 2, 2.0, 2),
    ],
)
def test_threads_per_step_shape(tokens, model_bytes, cpus, spare, expected):
    assert step_threads(tokens=tokens, model_bytes=model_bytes, cpus=cpus, spare=spare) == expected


@pytest.mark.parametrize("tokens", [1, 4, 512])
def test_n_threads_overrides_the_rule(tokens):
    for model_bytes in (TINY, GEMMA):
        assert step_threads(tokens=tokens, model_bytes=model_bytes, cpus=2, spare=0, fixed=3) == 3


class Readings:
    """/proc figures a test sets by hand (the meter's inputs), with a clock."""

    def __init__(self):
        self.now, self.stat, self.own = 0.0, (0.0, 0.0), 0.0

    def set(self, now, busy, total, own):
        self.now, self.stat, self.own = now, (busy, total), own


def meter_for(readings: Readings, cpus: int = 2) -> CpuMeter:
    return CpuMeter(
        cpus=cpus,
        window=0.5,
        clock=lambda: readings.now,
        read_stat=lambda: readings.stat,
        read_self=lambda: readings.own,
    )


def test_meter_counts_other_processes_busy_cpus_not_its_own():
    readings = Readings()
    meter = meter_for(readings)
    assert meter.spare() == 2.0  # before a first window: every CPU
    # Over 1 s (200 jiffies of 2 CPUs): 150 busy, 100 of them this process's.
    readings.set(1.0, 150, 200, 100)
    assert meter.spare() == pytest.approx(1.5)
    # Within the window: the last value, no new reading.
    readings.set(1.2, 400, 240, 100)
    assert meter.spare() == pytest.approx(1.5)
    # Another process takes both CPUs.
    readings.set(2.0, 350, 400, 100)
    assert meter.spare() == pytest.approx(0.0)


def test_meter_counts_this_process_other_decode_loops():
    readings = Readings()
    meter = meter_for(readings, cpus=4)
    with meter.decoding():
        assert meter.spare() == 3.0
        with meter.decoding():
            assert meter.spare() == 2.0
    assert meter.spare() == 4.0


def test_meter_without_proc_reports_every_cpu_spare():
    meter = CpuMeter(cpus=2, window=0.0, read_stat=lambda: None, read_self=lambda: None)
    assert meter.spare() == 2.0
