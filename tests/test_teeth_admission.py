"""Who waits for a batch scheduler's slots (inference_worker/admission.py), without a model:
the counts a scheduler reports, first come first served, cancel/release and unloading.

The loop that hands out slots is inference_worker/batch.py (tests/test_batch_scheduler.py,
with a real tiny model); here ``admit`` stands in for its bookkeeping of one admission."""

from __future__ import annotations

import threading
import time

import pytest

from inference_worker.admission import Admission
from inference_worker.sequence import SchedulerClosed
from model_swap.generation import Sampling


def admit(adm: Admission):
    """What BatchScheduler._admit does to the first waiting sequence, under the lock."""
    with adm._cond:
        seq = adm._waiting.popleft()
        seq.admitted = time.perf_counter()
        adm._admitted_open += 1
    return seq


def started(adm: Admission, prompt=(1, 2, 3), max_tokens=4, sampling=None):
    seq = adm.reserve()
    adm.start(seq, list(prompt), max_tokens, sampling or Sampling())
    return seq


def test_a_reserved_sequence_is_open_but_neither_queued_nor_running():
    adm = Admission("m")
    seq = adm.reserve()
    assert (adm.queued, adm.running, adm._open) == (0, 0, 1)
    assert seq.admitted is None and not seq.cancelled and not seq.released


def test_start_queues_with_the_request_values_and_the_time_it_was_submitted():
    adm = Admission("m")
    seq = adm.reserve()
    sampling = Sampling(temperature=0.3, seed=7)
    before = time.perf_counter()
    adm.start(seq, [5, 6], 9, sampling)
    after = time.perf_counter()
    assert (seq.prompt, seq.max_tokens, seq.sampling) == ([5, 6], 9, sampling)
    assert before <= seq.submitted <= after
    assert (adm.queued, adm.running) == (1, 0)


def test_waiting_sequences_are_admitted_in_arrival_order():
    adm = Admission("m")
    seqs = [started(adm, prompt=[i]) for i in range(4)]
    assert adm.queued == 4
    order = [admit(adm) for _ in range(4)]
    assert order == seqs
    assert (adm.queued, adm.running) == (0, 4)


def test_a_sequence_cancelled_before_start_is_never_queued_but_stays_open():
    adm = Admission("m")
    seq = adm.reserve()
    adm.cancel(seq)
    adm.start(seq, [1], 1, Sampling())
    assert seq.cancelled and not seq.released
    assert (adm.queued, adm.running, adm._open) == (0, 0, 1)
    assert adm.release(seq) is True
    assert adm._open == 0


def test_cancel_marks_a_running_sequence_and_keeps_it_counted_until_released():
    adm = Admission("m")
    started(adm)
    seq = admit(adm)
    adm.cancel(seq)
    assert seq.cancelled and not seq.released
    assert (adm.running, adm._open) == (1, 1)


def test_release_of_a_queued_sequence_takes_it_out_of_the_queue_only():
    adm = Admission("m")
    first, second, third = (started(adm) for _ in range(3))
    admit(adm)  # first runs
    assert adm.release(second) is True
    assert second.released and second.cancelled
    assert (adm.queued, adm.running, adm._open) == (1, 1, 2)
    assert admit(adm) is third


def test_release_of_a_running_sequence_frees_its_count_once():
    adm = Admission("m")
    started(adm), started(adm)
    running = admit(adm)
    assert adm.release(running) is True
    assert (adm.queued, adm.running, adm._open) == (1, 0, 1)
    assert adm.release(running) is False  # idempotent: nothing counted twice
    assert (adm.queued, adm.running, adm._open) == (1, 0, 1)


def test_release_of_a_reserved_sequence_only_closes_it():
    adm = Admission("m")
    seq = adm.reserve()
    other = started(adm)
    assert adm.release(seq) is True
    assert (adm.queued, adm.running, adm._open) == (1, 0, 1)
    assert admit(adm) is other


def test_an_unloading_model_takes_no_new_sequence_and_says_which():
    adm = Admission("gemma")
    adm.reserve()
    adm._closing = True  # what BatchScheduler.close sets first
    with pytest.raises(SchedulerClosed, match=r"^gemma is being unloaded$"):
        adm.reserve()
    assert adm._open == 1


@pytest.mark.parametrize("action", ["start", "cancel", "release"])
def test_each_change_wakes_the_loop(action):
    adm = Admission("m")
    seq = adm.reserve()
    if action == "cancel":
        adm.start(seq, [1], 1, Sampling())
    woke = threading.Event()
    ready = threading.Event()

    def loop():
        with adm._cond:
            ready.set()
            if adm._cond.wait(timeout=10):
                woke.set()

    thread = threading.Thread(target=loop)
    thread.start()
    assert ready.wait(5)
    with adm._cond:  # the loop is waiting once we hold the lock
        pass
    if action == "start":
        adm.start(seq, [1], 1, Sampling())
    elif action == "cancel":
        adm.cancel(seq)
    else:
        adm.release(seq)
    thread.join(10)
    assert woke.is_set()
