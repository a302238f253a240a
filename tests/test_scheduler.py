"""The scheduler's rule with a fake clock: grouping, the fairness bound, no starvation,
hits bypass; and the gate's grants under random operation sequences (Hypothesis)."""

from __future__ import annotations

import math
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_store_server.core.gate import Busy
from model_store_server.core.grants import Hit, Swap
from model_store_server.core.scheduler import Scheduler
from model_store_server.core.worker_view import Rejected, WorkerView
from model_store_server.decision import Action
from model_store_server.policies import Tier, create_policy
from tests.conftest import example_counts


def test_a_group_is_every_request_for_the_next_model_within_max_wait():
    s = Scheduler(max_wait=2.0)
    arrivals = [("a", 0.0), ("b", 0.1), ("c", 0.2), ("a", 0.3), ("b", 0.4), ("a", 5.0)]
    waiters = [s.arrive(model, now) for model, now in arrivals]
    assert s.next_model() == "a"
    # a's requests that arrived before b's oldest (0.1) plus 2 s: not the one at 5.0
    assert s.group("a", 0.5) == [waiters[0], waiters[3]]
    assert s.group("b", 0.5) == []  # b is not next
    for waiter in s.group("a", 0.5):
        s.leave(waiter)
    assert s.next_model() == "b"
    assert s.group("b", 0.5) == [waiters[1], waiters[4]]


def test_max_wait_zero_is_strict_arrival_order():
    s = Scheduler(max_wait=0.0)
    a1, b1, a2 = s.arrive("a", 0.0), s.arrive("b", 0.0), s.arrive("a", 0.0)
    assert s.group("a", 0.0) == [a1]  # a2 came after b1: b goes first
    s.leave(a1)
    assert s.next_model() == "b" and s.group("b", 0.0) == [b1]
    assert not s.may_hit("a", 0.0)  # no hit overtakes a waiting request
    s.leave(b1)
    assert s.group("a", 0.0) == [a2] and s.may_hit("a", 0.0, a2)


def test_hits_bypass_until_another_model_has_waited_max_wait():
    s = Scheduler(max_wait=2.0)
    assert s.may_hit("a", 0.0)  # nobody waits
    s.arrive("b", 10.0)
    assert s.may_hit("a", 10.0) and s.may_hit("a", 11.999)
    assert not s.may_hit("a", 12.0)  # b waited 2 s: a's new arrivals queue behind b
    assert s.may_hit("b", 12.0)  # the waiting model itself is not held back
    assert s.patient("b", 11.0) and not s.patient("b", 12.0)
    assert s.next_change(11.0) == pytest.approx(1.0)


def test_no_starvation_under_a_steady_stream_for_one_model():
    """a is resident and asked every 100 ms; b's request is served after at most max_wait."""
    s = Scheduler(max_wait=2.0)
    b = s.arrive("b", 0.0)
    now, served_as_hits = 0.0, 0
    while s.may_hit("a", now):
        served_as_hits += 1
        now += 0.1
    assert now == pytest.approx(2.0, abs=0.11) and served_as_hits >= 19
    late = s.arrive("a", now)  # a's arrival queues behind b from here on
    assert s.next_model() == "b" and s.group("b", now) == [b]
    assert not s.in_group(late, now)
    s.leave(b)
    assert s.in_group(late, now)


def test_fairness_bound_first_come_first_served_between_models():
    """The oldest waiting request's model is always next: a request waits only for the
    groups whose oldest request arrived before its own."""
    s = Scheduler(max_wait=1.2)
    order = []
    for i, model in enumerate("cabcab"):
        s.arrive(model, i * 0.5)
    while len(s):
        model = s.next_model()
        order.append(model)
        for waiter in s.group(model, 10.0):
            s.leave(waiter)
    # c at 0 and 1.5 (< a's 0.5 + 1.2) together, then a (0.5, 2.0 < b's 1.0 + 1.2), then b
    assert order == ["c", "a", "b"]


def test_describe_shows_per_model_waiting_and_oldest_wait():
    s = Scheduler(max_wait=2.0)
    s.arrive("a", 1.0)
    s.arrive("a", 2.0)
    s.arrive("b", 3.0)
    assert s.describe(4.0) == {
        "a": {"waiting": 2, "oldest_wait_s": 3.0},
        "b": {"waiting": 1, "oldest_wait_s": 1.0},
    }


def test_a_group_takes_requests_strictly_before_the_next_models_oldest_plus_max_wait():
    s = Scheduler(max_wait=2.0)
    a1, _ = s.arrive("a", 0.0), s.arrive("b", 1.0)
    a2, a3 = s.arrive("a", 2.75), s.arrive("a", 3.0)  # 3.0 is b1's 1.0 plus 2.0: not before
    assert s.group("a", 3.0) == [a1, a2]
    assert not s.in_group(a3, 3.0) and s.in_group(a2, 3.0)


def test_a_max_wait_under_a_second_still_groups_within_it():
    s = Scheduler(max_wait=0.5)
    a1, _, a2 = s.arrive("a", 0.0), s.arrive("b", 0.125), s.arrive("a", 0.5)
    a3 = s.arrive("a", 0.75)  # past b1 plus 0.5
    assert s.group("a", 1.0) == [a1, a2] and not s.in_group(a3, 1.0)
    assert s.may_hit("a", 1.0, a2)  # a queued member of the group is served as a hit
    assert not s.may_hit("a", 1.0, a3)  # b has waited past max_wait: a3 waits for b


def test_nothing_waiting_has_no_next_model_and_no_next_change():
    s = Scheduler(max_wait=2.0)
    assert s.next_model() is None and s.group("a", 0.0) == [] and len(s) == 0
    assert s.next_change(0.0) == math.inf
    s.arrive("b", 10.0)
    assert s.next_change(10.5) == 1.5
    assert s.next_change(12.0) == math.inf  # it reached max_wait now: nothing is ahead
    assert s.next_change(13.0) == math.inf


def test_describe_rounds_waits_to_the_millisecond():
    s = Scheduler(max_wait=2.0)
    s.arrive("a", 1.0)
    assert s.describe(1.123456) == {"a": {"waiting": 1, "oldest_wait_s": 0.123}}


def test_a_claimed_model_keeps_its_group_after_the_swapping_request_leaves():
    """The request that carries a swap out leaves the queue; the rest of its model's group
    must not pass to the next model's turn because of that, however long the load takes."""
    s = Scheduler(max_wait=2.0)
    b1, a1, b2, c1, b3 = (
        s.arrive(m, t) for m, t in [("b", 0.0), ("a", 0.01), ("b", 0.02), ("c", 0.03), ("b", 2.5)]
    )
    assert s.group("b", 0.0) == [b1, b2]  # b3 came after a's oldest plus 2 s
    s.leave(b1)  # b1 carries out b's swap
    unclaimed = s.group("b", 3.0)
    s.claim("b")
    assert s.group("b", 3.0) == [b2]  # the same group, 3 s later, a's oldest at 2.99 s
    assert s.in_group(b2, 3.0) and not s.in_group(b3, 3.0)
    assert s.may_hit("b", 3.0, b2) and not s.may_hit("b", 3.0, b3)
    s.unclaim("b")
    assert s.group("b", 3.0) == unclaimed == []  # what the view used to serve: nobody
    s.claim("b")
    s.leave(a1)
    s.leave(c1)
    assert s.group("b", 3.0) == [b2, b3]  # no other model waits: every b request
    s.unclaim("b")
    assert s.next_model() == "b" and s.group("b", 3.0) == [b2, b3]


def test_max_wait_zero_claimed_group_is_the_requests_before_the_next_models():
    s = Scheduler(max_wait=0.0)
    b1, a1, b2 = s.arrive("b", 0.0), s.arrive("a", 0.0), s.arrive("b", 0.0)
    s.leave(b1)
    s.claim("b")
    assert s.group("b", 1.0) == []  # b2 came after a1: strict arrival order holds
    s.leave(a1)
    assert s.group("b", 1.0) == [b2]


def test_bad_max_wait_is_refused():
    with pytest.raises(ValueError, match=r"^max_wait must be >= 0$"):
        Scheduler(max_wait=-0.5)
    assert Scheduler(max_wait=0).max_wait == 0


# -- the view: a group is served before the next swap ------------------------------------


def view(capacity=3, loaded=1, max_wait=2.0, name="lru", clock=time.monotonic):
    cache = create_policy(name, capacity=capacity, ttl=5.0)
    resident = create_policy(name, capacity=loaded, ttl=5.0, tier=Tier.RESIDENT)
    v = WorkerView(cache, resident, max_wait=max_wait, clock=clock)
    with v.exclusive(time.monotonic() + 1) as exclusive:
        exclusive.end(synced=True)
    return v


def test_a_committed_load_hands_hits_to_its_whole_group():
    import threading

    v = view()
    first = v.admit("a", time.monotonic() + 5)
    assert isinstance(first, Swap)
    results = {}

    def ask(key, model):
        results[key] = v.admit(model, time.monotonic() + 5)

    threads = [threading.Thread(target=ask, args=(k, m)) for k, m in (("b1", "b"), ("a2", "a"))]
    for t in threads:
        t.start()
        time.sleep(0.05)
    assert v.snapshot().queues == {
        "a": {"waiting": 1, "oldest_wait_s": pytest.approx(0.05, abs=0.05)},
        "b": {"waiting": 1, "oldest_wait_s": pytest.approx(0.1, abs=0.05)},
    }
    hit = first.commit()
    threads[1].join(5)
    assert isinstance(results["a2"], Hit)  # served with a's group, not after b
    assert hit.together == results["a2"].together == 2  # sent to the worker as one group
    assert threads[0].is_alive()  # b waits: a is generating and b is still patient
    time.sleep(0.1)  # b's thread looks at the slot, and waits without draining a
    later = v.admit("a", time.monotonic() + 0.5)
    assert isinstance(later, Hit)  # patient: a new request for a is still served
    assert later.together == 1
    later.release()
    hit.release()
    results["a2"].release()
    threads[0].join(5)
    assert isinstance(results["b1"], Swap) and results["b1"].decision.unloaded == ("a",)
    results["b1"].commit().release()
    assert v.gate.idle


def test_a_load_longer_than_max_wait_still_serves_its_whole_group():
    """b's load takes 3 s of the scheduler's clock (max_wait 2 s) while a and b requests
    wait: at the commit every b request of the group gets its hit, before a's swap."""
    import threading

    clock = [100.0]
    v = view(clock=lambda: clock[0])
    first = v.admit("b", time.monotonic() + 5)
    assert isinstance(first, Swap)
    results = {}

    def ask(key, model):
        results[key] = v.admit(model, time.monotonic() + 5)

    threads = {}
    for count, (key, model) in enumerate((("a1", "a"), ("b2", "b"), ("b3", "b")), 1):
        clock[0] += 0.01
        threads[key] = threading.Thread(target=ask, args=(key, model))
        threads[key].start()
        deadline = time.monotonic() + 5  # each one queued before the next arrives
        while len(v.scheduler) < count and time.monotonic() < deadline:
            time.sleep(0.005)
    assert v.snapshot().queues["b"]["waiting"] == 2 and v.snapshot().queues["a"]["waiting"] == 1
    clock[0] += 3.0  # the load took longer than max_wait
    hit = first.commit()
    for key in ("b2", "b3"):
        threads[key].join(5)
        assert isinstance(results[key], Hit), key  # served with b's group
        assert results[key].together == 3
    assert hit.together == 3
    assert threads["a1"].is_alive()  # a waits for b's group to end, then swaps
    for held in (hit, results["b2"], results["b3"]):
        held.release()
    threads["a1"].join(5)
    assert isinstance(results["a1"], Swap) and results["a1"].decision.unloaded == ("b",)
    results["a1"].commit().release()
    assert v.gate.idle


@pytest.mark.parametrize("ending", ["commit", "abort"])
def test_a_swap_that_ended_leaves_its_model_to_the_arrival_order_rule(ending):
    """Once a swap commits or fails, its model's later requests wait their turn again: a
    request for it behind an older one for another model is not in the next group."""
    clock = [100.0]
    v = view(clock=lambda: clock[0])
    swap = v.admit("b", time.monotonic() + 5)
    assert isinstance(swap, Swap)
    if ending == "commit":
        swap.commit().release()
    else:
        swap.abort(synced=True)
    c = v.scheduler.arrive("c", 101.0)
    b = v.scheduler.arrive("b", 101.1)
    assert v.scheduler.next_model() == "c" and v.scheduler.group("c", 101.2) == [c]
    assert v.scheduler.group("b", 101.2) == [] and not v.scheduler.in_group(b, 101.2)
    v.scheduler.leave(c)
    v.scheduler.leave(b)
    assert v.gate.idle


# -- the gate: no exception path leaves a slot or a hit held -------------------------------

OPS = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "hit",
                "swap-commit",
                "swap-raise",
                "swap-leave",
                "exclusive-raise",
                "unload",
                "sweep",
                "release-one",
            ]
        ),
        st.sampled_from(["a", "b", "c"]),
    ),
    max_size=25,
)


class Boom(BaseException):
    """Not even an Exception."""


@example_counts(50, 600)
def test_no_sequence_of_grants_and_failures_leaks_the_slot_or_a_hit(max_examples):
    @settings(max_examples=max_examples, deadline=None)
    @given(OPS, st.sampled_from([0.0, 2.0]))
    def check(ops, max_wait):
        v = view(capacity=2, loaded=2, max_wait=max_wait)
        held: list[Hit] = []
        for op, model in ops:
            deadline = time.monotonic() + 0.01
            try:
                if op == "release-one":
                    if held:
                        held.pop().release()
                    continue
                if op == "exclusive-raise":
                    with v.exclusive(deadline):
                        raise Boom()
                if op == "unload":
                    swap = v.take_away(model, Action.UNLOAD, deadline)
                    if swap is not None:
                        with swap:
                            swap.commit(hit=False)
                    continue
                if op == "sweep":
                    swap = v.sweep()
                    if swap is not None:
                        with swap:
                            raise Boom()
                    continue
                grant = v.admit(model, deadline)
                if isinstance(grant, Hit):
                    held.append(grant)
                    continue
                with grant:
                    if op == "swap-raise":
                        raise Boom()
                    if op in ("swap-commit", "hit"):
                        held.append(grant.commit())
            except (Boom, Busy, Rejected):
                pass
            assert v.gate.slot_free, (op, model)
        for hit in held:
            hit.release()
        assert v.gate.idle and v.snapshot().generating == 0 and not v.snapshot().queues

    check()


def test_status_shows_the_scheduler_and_its_queues(worker, start_store):
    from tests.conftest import store_status

    status = store_status(start_store(worker))
    assert status["scheduler_max_wait"] == 2.0 and status["queues"] == {}
