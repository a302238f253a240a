"""The batch scheduler itself (``inference_worker/batch.py``) on a real tiny model, no server:
the batch it lays out after out-of-order finishes and admissions, and the texts it samples."""

from __future__ import annotations

import threading
import time

import llama_cpp
import pytest

from inference_worker import admission, batch
from inference_worker.batch import BatchScheduler, BatchStats
from model_swap.generation import Sampling
from tests.conftest import A, wait_for

GREEDY = Sampling(temperature=0.0)


@pytest.fixture
def llm(models_dir):
    model = llama_cpp.Llama(str(models_dir / A), n_ctx=16, verbose=False)
    yield model
    model.close()


def scheduler_for(llm, parallel: int, layouts: list | None = None) -> BatchScheduler:
    return BatchScheduler(
        llm,
        name="tiny",
        parallel=parallel,
        n_ctx_seq=256,
        stats=BatchStats(),
        on_batch=None if layouts is None else layouts.append,
    )


def prompt(llm, i: int) -> list[int]:
    return llm.tokenize(f"request {i}: hello world".encode(), add_bos=True, special=False)


def collect(scheduler: BatchScheduler, seq) -> tuple[list[int], object]:
    """Every token of ``seq``, then its outcome; releases it."""
    tokens = []
    try:
        while True:
            item = seq.out.get(timeout=60)
            if not isinstance(item, int):
                return tokens, item
            tokens.append(item)
    finally:
        scheduler.release(seq)


def run(scheduler: BatchScheduler, llm, budgets: dict[int, int]) -> dict[int, list[int]]:
    """Start every request at once (in key order; the loop sees them together), collect all."""
    seqs = {}
    with scheduler._cond:  # the loop admits none before all are queued
        for i, budget in budgets.items():
            seqs[i] = scheduler.reserve()
            scheduler.start(seqs[i], prompt(llm, i), budget, GREEDY)
    results: dict[int, list[int]] = {}
    outcomes: dict[int, object] = {}

    def read(i):
        results[i], outcomes[i] = collect(scheduler, seqs[i])

    threads = [threading.Thread(target=read, args=(i,)) for i in seqs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert outcomes == dict.fromkeys(budgets, "length")
    return results


def test_batches_stay_in_compact_slot_order_after_out_of_order_finishes_and_admissions(llm):
    """Six requests on four slots with different budgets: the short ones finish first, their
    slots are taken by a running sequence from above and the queued requests get the top
    ones. Every batch holds slots 0..k-1, each once and ascending (one llama.cpp pass), and
    every request gets the greedy text it gets alone."""
    layouts: list[list[int]] = []
    scheduler = scheduler_for(llm, 4, layouts)
    try:
        budgets = {0: 30, 1: 5, 2: 24, 3: 12, 4: 18, 5: 9}
        alone = {i: run(scheduler, llm, {i: budget})[i] for i, budget in budgets.items()}
        layouts.clear()
        together = run(scheduler, llm, budgets)
        assert together == alone
        assert scheduler.moves >= 2  # slots were freed below running sequences, and refilled
        seen_ids = set()
        for layout in layouts:
            ids = list(dict.fromkeys(layout))  # each sequence's tokens are adjacent
            assert len(ids) == len(set(layout)), layout
            assert ids == list(range(len(ids))), layout
            seen_ids.update(ids)
        assert seen_ids == {0, 1, 2, 3}
        assert wait_for(lambda: scheduler.kv_tokens == 0)  # counted after the last step
    finally:
        scheduler.close()


def test_a_cancelled_sequence_below_others_is_filled_from_the_top(llm):
    layouts: list[list[int]] = []
    scheduler = scheduler_for(llm, 3, layouts)
    try:
        expected = run(scheduler, llm, {2: 20})[2]
        seqs = []
        with scheduler._cond:
            for i in range(3):
                seqs.append(scheduler.reserve())
                scheduler.start(seqs[i], prompt(llm, i), 200, GREEDY)
        assert seqs[0].out.get(timeout=60) is not None
        scheduler.cancel(seqs[0])
        first, outcome = collect(scheduler, seqs[0])
        assert outcome == "cancelled"
        tokens = [seqs[2].out.get(timeout=60) for _ in range(20)]
        layouts.clear()
        seqs[1].out.get(timeout=60)
        assert seqs[2].slot == 0 and seqs[1].slot == 1  # the top one moved down
        assert all(sorted(set(layout)) == [0, 1] for layout in layouts)
        for seq in seqs[1:]:
            scheduler.release(seq)
        assert tokens[: len(expected)] == expected
    finally:
        scheduler.close()


class LoopKilled(BaseException):
    """Escapes the loop's ``except Exception``: its thread dies, as a bug there would."""


@pytest.fixture
def quick_checks(monkeypatch):
    """A reader and close() notice a dead loop by polling (every IDLE_CHECK, 1 s): poll
    every 20 ms here, so these tests take milliseconds instead of seconds."""
    monkeypatch.setattr(batch, "IDLE_CHECK", 0.02)


def kill_loop(scheduler: BatchScheduler) -> None:
    def die(_layout):
        raise LoopKilled

    scheduler._on_batch = die


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_generation_whose_loop_died_ends_with_an_error_instead_of_waiting(
    models_dir, quick_checks
):
    from inference_worker.batch import DecodeFailed
    from inference_worker.engine import Engine
    from inference_worker.generation import Job

    engine = Engine(n_ctx=256, parallel=2)
    engine.load(A, models_dir / A)
    scheduler = engine._models[A].scheduler
    kill_loop(scheduler)
    generation = engine.begin(A, Job(prompt="hello", max_tokens=8))
    try:
        with pytest.raises(DecodeFailed, match="stopped"):
            list(generation.tokens())
    finally:
        generation.close()
    assert not scheduler.alive
    assert engine.unload(A)  # and the model can still be closed


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_close_returns_when_the_loop_died_with_a_sequence_open(llm, quick_checks):
    scheduler = scheduler_for(llm, 2)
    kill_loop(scheduler)
    seq = scheduler.reserve()
    scheduler.start(seq, prompt(llm, 0), 8, GREEDY)
    closer = threading.Thread(target=scheduler.close)
    closer.start()
    closer.join(30)
    assert not closer.is_alive()
    assert isinstance(scheduler.next_item(seq), Exception)
    assert scheduler.release(seq)


def test_alternating_resident_models_get_their_texts_on_one_thread_each(models_dir):
    """Two resident tiny models, hits alternating A, B, A, B: each gets the text a repeated
    hit gets, and each model's steps ran on one thread (a tiny model's steps gain nothing
    from a second one, and an idle team spinning would cost the other model's loop)."""
    from inference_worker.batch import BatchScheduler as Scheduler
    from inference_worker.engine import Engine
    from inference_worker.generation import Job
    from tests.conftest import B

    engine = Engine(n_ctx=256, parallel=2)
    for name in (A, B):
        engine.load(name, models_dir / name)

    def hit(name: str) -> str:
        generation = engine.begin(name, Job(prompt="hello world", max_tokens=12, sampling=GREEDY))
        try:
            return "".join(generation.tokens())
        finally:
            generation.close()

    repeated = {name: [hit(name), hit(name)] for name in (A, B)}
    alternating = {A: [], B: []}
    for _ in range(2):
        for name in (A, B):
            alternating[name].append(hit(name))
    assert alternating == repeated
    assert repeated[A][0] != repeated[B][0]
    schedulers = [engine._models[name].scheduler for name in (A, B)]
    assert all(isinstance(s, Scheduler) and s.threads == 1 for s in schedulers)
    for name in (A, B):
        assert engine.unload(name)


def test_sequences_that_end_in_the_same_step_do_not_move_into_each_others_slots(llm):
    """Four equal requests admitted together end in the same step: no slot is compacted
    (each move queues whole-stream copies that the next decode, or the close, pays for),
    and none is left pending for the close to flush. When two of four end together while
    the others run on, each hole below the running ones is filled once."""
    scheduler = scheduler_for(llm, 4)
    try:
        equal = run(scheduler, llm, dict.fromkeys(range(4), 12))
        assert scheduler.moves == 0 and not scheduler._kept.pending
        assert equal == {i: run(scheduler, llm, {i: 12})[i] for i in range(4)}
        moves = scheduler.moves
        run(scheduler, llm, {4: 6, 5: 6, 6: 20, 7: 20})  # slots 0 and 1 end, 2 and 3 run on
        assert scheduler.moves - moves == 2
    finally:
        scheduler.close()


def test_an_idle_scheduler_gives_a_group_sent_together_one_first_step(llm, monkeypatch):
    """Three requests the store sent together (after a swap) reach the worker a few ms apart:
    the idle loop waits for all three, and their prompts share the first step, instead of
    the first one's prompt going alone and the others' a step later."""
    monkeypatch.setattr(admission, "GATHER_WINDOW", 30.0)  # only the arrivals end the wait
    layouts: list[list[int]] = []
    scheduler = scheduler_for(llm, 4, layouts)
    try:
        expected = {i: run(scheduler, llm, {i: 6})[i] for i in range(3)}
        layouts.clear()
        seqs = []
        for i in range(3):
            seqs.append(scheduler.reserve())
            scheduler.start(seqs[i], prompt(llm, i), 6, GREEDY, together=3)
            time.sleep(0.2)  # the loop is idle and would step at once
        assert [collect(scheduler, seq) for seq in seqs] == [
            (expected[i], "length") for i in range(3)
        ]
        assert sorted(set(layouts[0])) == [0, 1, 2]  # every prompt in the first step
    finally:
        scheduler.close()


def test_a_group_member_that_never_comes_holds_the_first_step_one_window_at_most(llm, monkeypatch):
    monkeypatch.setattr(admission, "GATHER_WINDOW", 0.3)
    scheduler = scheduler_for(llm, 4)
    try:
        seq = scheduler.reserve()
        started = time.perf_counter()
        scheduler.start(seq, prompt(llm, 0), 1, GREEDY, together=3)  # two of them never come
        tokens, outcome = collect(scheduler, seq)
        assert outcome == "length" and len(tokens) == 1
        assert time.perf_counter() - started >= 0.3
        with scheduler._cond:
            assert scheduler.gathering(4, time.perf_counter()) == 0.0  # nothing waits
    finally:
        scheduler.close()


def test_the_wait_is_for_as_many_as_there_are_slots():
    """Pure: ``gathering`` of a queue (no model): the head's group, capped by the slots."""
    queue = admission.Admission("pure")
    seqs = [queue.reserve() for _ in range(3)]
    for seq in seqs[:2]:
        queue.start(seq, [1], 1, GREEDY, together=5)
    head = seqs[0].submitted
    with queue._cond:
        assert queue.gathering(8, head) == pytest.approx(admission.GATHER_WINDOW)
        assert queue.gathering(2, head) == 0.0  # two slots, two waiting: step now
        assert queue.gathering(8, head + admission.GATHER_WINDOW + 1) == 0.0  # window over
    queue.start(seqs[2], [1], 1, GREEDY)  # a request sent on its own changes nothing
    with queue._cond:
        assert queue.gathering(8, head + 0.05) == pytest.approx(admission.GATHER_WINDOW - 0.05)
    alone = admission.Admission("alone")
    seq = alone.reserve()
    alone.start(seq, [1], 1, GREEDY)
    with alone._cond:
        assert alone.gathering(8, seq.submitted) == 0.0
