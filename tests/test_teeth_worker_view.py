"""An explicit unload under steady traffic: the model being taken away admits no new
generation, so the unload finishes instead of timing out (real threads, no servers);
then the gate's transitions read back through its public state, and a model being
swapped in seen by placement as coming in."""

from __future__ import annotations

import threading
import time

import pytest

from model_store_server.core.gate import Busy, Gate, WorkerDown
from model_store_server.core.grants import Hit, Swap
from model_store_server.core.view_control import PinConflict
from model_store_server.decision import Action, Decision, Outcome, decide
from tests.conftest import FakeClock
from tests.test_worker_view import begin, in_thread, serve, state


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def test_a_request_arriving_while_its_model_is_unloaded_waits_for_the_unload():
    s = state(capacity=3, loaded=2)
    running = serve(s, "A")
    unloading, unloaded = in_thread(lambda: s.take_away("A", Action.UNLOAD, time.monotonic() + 5))
    assert wait_until(lambda: s.snapshot().swapping)  # the unload holds the slot, draining A
    newcomer, answer = in_thread(lambda: begin(s, "A", 5))
    time.sleep(0.1)
    assert "value" not in answer, "a new generation started on a model being unloaded"
    running.release()
    unloading.join(5)
    swap = unloaded["value"]
    assert swap.decision.unloaded == ("A",)
    swap.commit(hit=False)
    newcomer.join(5)
    reload = answer["value"]
    assert isinstance(reload, Swap) and reload.decision.action is Action.LOAD_FROM_LOCAL_STORE
    reload.commit().release()


def test_an_explicit_unload_finishes_under_steady_traffic_on_its_model():
    """Two clients keep generations on A overlapping; the unload still ends within its
    deadline, and the traffic goes on afterwards (A is loaded again)."""
    s = state(capacity=3, loaded=2)
    stop = threading.Event()
    errors: list[BaseException] = []
    served = [0, 0]

    def client(index: int, first: Hit) -> None:
        hit = first
        try:
            while True:
                time.sleep(0.02)  # the generation
                hit.release()
                if stop.is_set():
                    return
                hit = serve(s, "A")
                served[index] += 1
        except BaseException as err:  # noqa: BLE001 - handed to the test
            errors.append(err)

    # Both generations start before either ends: A always has one running.
    clients = [threading.Thread(target=client, args=(i, serve(s, "A"))) for i in (0, 1)]
    for thread in clients:
        thread.start()
    time.sleep(0.1)
    swap = s.take_away("A", Action.UNLOAD, time.monotonic() + 3)
    assert swap is not None and swap.decision.unloaded == ("A",)
    swap.commit(hit=False)
    before = sum(served)
    assert wait_until(lambda: sum(served) > before + 2)
    stop.set()
    for thread in clients:
        thread.join(5)
    assert not errors
    assert s.snapshot().generating == 0


def test_a_swap_changing_a_model_holds_back_hits_on_it_only():
    gate = Gate()
    with gate.cond:
        gate.take_swap()
        gate.change(frozenset({"a"}))
        assert gate.changing("a") and not gate.changing("b")
        assert not gate.admits_hit("a") and gate.admits_hit("b")
        gate.drain(frozenset({"b"}))
        assert not gate.admits_hit("b") and gate.admits_hit("c")
        assert not gate.idle
        gate.release()
        assert gate.slot_free and gate.idle
        assert not gate.changing("a") and gate.admits_hit("a") and gate.admits_hit("b")


def test_a_draining_model_keeps_the_gate_busy_even_with_the_slot_free():
    gate = Gate()
    with gate.cond:
        gate.drain(frozenset({"a"}))
        assert gate.slot_free and not gate.idle
        gate.drain(frozenset())
        assert gate.idle


def test_exclusive_that_times_out_takes_nothing_and_says_why():
    gate = Gate()
    with gate.cond:
        gate.enter("a")
        with pytest.raises(Busy, match="^timed out waiting for running generations to finish$"):
            gate.take_exclusive(time.monotonic() - 1)
        assert gate.slot_free
        gate.take_swap()
        with pytest.raises(Busy, match="^timed out waiting for another model swap to finish$"):
            gate.take_exclusive(time.monotonic() - 1)
        assert gate.slot == Gate.SWAP
        with pytest.raises(RuntimeError, match="swap"):
            gate.take_swap()


def test_hits_are_counted_per_model():
    gate = Gate()
    with gate.cond:
        gate.enter("a")
        gate.enter("a")
        gate.enter("b")
        assert gate.active() == {"a": 2, "b": 1} and gate.generating("a") == 2
        assert not gate.leave("a")
        assert gate.leave("a") and gate.generating("a") == 0 and gate.active() == {"b": 1}


def test_a_model_being_swapped_in_is_incoming_for_placement():
    s = state(capacity=3, loaded=2)
    swap = begin(s, "A")
    assert isinstance(swap, Swap)

    def seen(model):
        return s.candidate(
            "w", 0, model, size=0, footprint=0, pending=0, placed=0, coming=[]
        ).incoming

    assert seen("A") and not seen("B")
    swap.commit().release()
    assert not seen("A")


def test_a_wait_uses_its_whole_deadline():
    """A wait with less than a second left still waits for the condition to come true."""
    gate = Gate()
    with gate.cond:
        gate.enter("a")

    def end_generation():
        with gate.cond:
            gate.leave("a")

    ended = threading.Timer(0.1, end_generation)
    ended.start()
    with gate.cond:
        gate.wait(lambda: not gate.generating("a"), time.monotonic() + 0.8, "the generation")
    ended.join()
    with gate.cond, pytest.raises(Busy, match="^timed out waiting for the generation$"):
        gate.enter("a")
        gate.wait(lambda: not gate.generating("a"), time.monotonic() + 0.05, "the generation")


# The view's explicit operations (core/view_control.py): values and limits read back.


def test_a_down_worker_refuses_requests_and_wakes_those_waiting():
    s = state(capacity=2, loaded=1)
    swap = begin(s, "A")  # holds the slot: B waits behind it
    t, result = in_thread(lambda: begin(s, "B", 30))
    assert wait_until(lambda: len(s.scheduler) == 1)
    started = time.monotonic()
    s.set_down(True)
    t.join(10)
    assert isinstance(result.get("error"), WorkerDown)
    assert str(result["error"]) == "the worker is down"
    assert time.monotonic() - started < 10  # woken, not left until its deadline
    with pytest.raises(WorkerDown):
        begin(s, "A", 1)
    s.set_down(False)
    swap.commit(hit=False)
    serve(s, "A").release()


def test_an_evict_takes_the_file_off_the_worker_and_out_of_memory():
    s = state(capacity=3, loaded=2)
    serve(s, "A", version="v1").release()
    serve(s, "B").release()
    swap = s.take_away("A", Action.EVICT, time.monotonic() + 5)
    decision = swap.decision
    assert (decision.model, decision.action) == ("A", Action.EVICT)
    assert (decision.evicted, decision.unloaded) == (("A",), ())
    assert s.snapshot().swapping
    swap.commit(hit=False)
    assert s.cache.members() == ["B"] and s.resident.members() == ["B"]
    again = begin(s, "A", version="v1")  # a new file: its version was forgotten
    assert again.decision.action is Action.LOAD_FROM_STORE
    again.commit(hit=False)


def test_taking_away_what_the_worker_does_not_hold_changes_nothing_and_frees_the_slot():
    s = state(capacity=3, loaded=1)
    serve(s, "A").release()
    serve(s, "B").release()  # A is now on disk only
    assert s.take_away("A", Action.UNLOAD, time.monotonic() + 1) is None
    assert s.take_away("C", Action.EVICT, time.monotonic() + 1) is None
    assert not s.snapshot().swapping
    assert s.cache.members() == ["A", "B"] or set(s.cache.members()) == {"A", "B"}
    swap = s.take_away("A", Action.EVICT, time.monotonic() + 1)  # the slot is free at once
    assert swap.decision.evicted == ("A",)
    swap.commit(hit=False)


def test_waiting_for_generations_to_end_is_bounded_and_names_the_models():
    s = state(capacity=3, loaded=3)
    lease = serve(s, "A")
    serve(s, "B").release()
    s.wait_ended(["B", "C"], time.monotonic() + 1)  # none runs there: at once
    with pytest.raises(Busy, match=r"^timed out waiting for running generations on B,A to finish$"):
        s.wait_ended(["B", "A"], time.monotonic() + 0.05)
    t, result = in_thread(lambda: s.wait_ended(["A"], time.monotonic() + 10))
    time.sleep(0.05)
    assert t.is_alive()
    lease.release()
    t.join(10)
    assert result == {"value": None}


def plan_load(model: str, seen: list | None = None):
    def plan(cache, resident, busy):
        if seen is not None:
            seen.append(busy)
        return decide(cache, resident, model)

    return plan


def test_a_background_change_runs_only_when_nothing_waits_and_nothing_it_takes_away_runs():
    s = state(capacity=3, loaded=1)
    lease = serve(s, "A")
    seen = []
    assert s.background(plan_load("B", seen)) is None  # it would unload A, which generates
    assert seen == [frozenset({"A"})]
    lease.release()
    assert s.background(lambda cache, resident, busy: None) is None
    s.set_down(True)
    assert s.background(plan_load("B")) is None
    s.set_down(False)
    swap = s.background(plan_load("B"), "v2")
    assert swap.decision.model == "B" and swap.decision.unloaded == ("A",)
    assert swap.ticket.version == "v2"
    assert s.background(plan_load("C")) is None  # the slot is taken
    swap.commit(hit=False)
    assert s.resident.members() == ["B"]


def nothing_taken(cache, resident, busy):
    """A plan that takes nothing away (it only needs the slot)."""
    return Outcome(Decision("A", Action.ALREADY_LOADED), cache.clone(), resident.clone())


def test_a_background_change_waits_behind_a_queued_request_and_a_resync():
    s = state(capacity=3, loaded=1)
    lease = serve(s, "A")
    t, result = in_thread(lambda: begin(s, "B", 10))  # waits for A's generation
    assert wait_until(lambda: len(s.scheduler) == 1)
    assert s.background(nothing_taken) is None  # a request waits: it goes first
    lease.release()
    t.join(10)
    result["value"].commit(hit=False)
    with s.exclusive(time.monotonic() + 1) as exclusive:
        exclusive.end(synced=False)
    assert s.background(nothing_taken) is None  # unsynced view: nothing on its own
    with s.exclusive(time.monotonic() + 1) as exclusive:
        exclusive.end(synced=True)
    swap = s.background(nothing_taken)
    assert swap.decision == Decision("A", Action.ALREADY_LOADED)
    swap.commit(hit=False)


def test_a_background_load_of_a_stale_copy_or_a_rejected_model_does_nothing():
    s = state(capacity=2, loaded=1)
    serve(s, "A", version="v1").release()
    assert s.background(plan_load("A"), "v2") is None  # the worker holds another version
    s.cache.pin("A")
    s.resident.pin("A")
    s.cache.admit("B")
    s.cache.pin("B")
    assert s.background(plan_load("C")) is None  # REJECTED: every place is pinned
    assert not s.snapshot().swapping


def test_pinning_more_bytes_than_a_tier_holds_is_refused_and_says_how_many():
    s = state(capacity=5, loaded=5, loaded_bytes=100, cache_bytes=1000)
    serve(s, "A", size=600, footprint=60, pin=True).release()
    with pytest.raises(PinConflict) as refused:
        begin(s, "B", 1, size=401, footprint=10, pin=True)
    assert str(refused.value) == (
        "pinning B would pin 1001 bytes in the cache tier, whose budget is 1000 (pinned: A)"
    )
    with pytest.raises(
        PinConflict, match=r"pin 101 bytes in the resident tier, whose budget is 100"
    ):
        begin(s, "B", 1, size=400, footprint=41, pin=True)
    serve(s, "B", size=400, footprint=40, pin=True).release()  # exactly the budgets
    assert s.cache.is_pinned("B") and s.resident.is_pinned("B")


def test_holding_a_model_waits_for_its_generations_and_holds_back_only_its_hits():
    s = state(capacity=3, loaded=2)
    lease = serve(s, "A")
    serve(s, "B").release()
    t, result = in_thread(lambda: s.hold("A", time.monotonic() + 10))
    time.sleep(0.05)
    assert t.is_alive()  # A still generates
    lease.release()
    t.join(10)
    swap = result["value"]
    assert swap.decision == Decision("A", Action.ALREADY_LOADED)
    assert (swap.ticket.owns_swap, swap.ticket.decision_ms, swap.ticket.version) == (
        True,
        0.0,
        None,
    )
    assert s.gate.changing("A") and not s.gate.changing("B")
    serve(s, "B").release()  # another model's hit goes on
    waiting, got = in_thread(lambda: begin(s, "A", 10))
    time.sleep(0.05)
    assert waiting.is_alive()  # A's hits wait for the hold
    assert swap.commit(hit=False) is None  # re-read: nothing changed, nothing granted
    waiting.join(10)
    assert isinstance(got["value"], Hit)
    got["value"].release()
    with pytest.raises(Busy, match="running generations on A to finish"):
        lease = serve(s, "A")
        s.hold("A", time.monotonic() + 0.05)
    lease.release()


def test_the_idle_sweep_unloads_what_is_due_in_one_swap_and_only_when_it_may():
    clock = FakeClock()
    s = state(capacity=3, loaded=3, clock=clock)
    serve(s, "A", keep_alive=1).release()
    serve(s, "B", keep_alive=2).release()
    serve(s, "C", keep_alive=100).release()
    clock.advance(3)
    held = s.hold("C", time.monotonic() + 1)  # the slot is taken: no sweep
    assert s.sweep() is None
    held.abort(synced=True)
    with s.exclusive(time.monotonic() + 1) as exclusive:
        exclusive.end(synced=False)
    assert s.sweep() is None  # an unsynced view changes nothing on its own
    with s.exclusive(time.monotonic() + 1) as exclusive:
        exclusive.end(synced=True)
    swap = s.sweep()
    due = swap.decision.unloaded
    assert set(due) == {"A", "B"}
    assert swap.decision == Decision(due[0], Action.UNLOAD, unloaded=due, expired=due)
    assert (swap.ticket.owns_swap, swap.ticket.decision_ms) == (True, 0.0)
    assert s.gate.changing("A") and s.gate.changing("B") and not s.gate.changing("C")
    swap.abort(synced=False)  # a failed unload: both count as held nowhere
    assert "A" not in s.cache and "C" in s.cache


def test_a_sync_slot_is_a_swap_of_no_model_and_waits_only_for_another_swap():
    s = state(capacity=3, loaded=2)
    serve(s, "A", version="v1").release()
    assert s.sync_slot(time.monotonic() + 1) is None  # synced already: nothing to take
    with s.exclusive(time.monotonic() + 1) as exclusive:
        exclusive.end(synced=False)
    swap = s.sync_slot(time.monotonic() + 1)
    assert swap.decision == Decision("", Action.ALREADY_LOADED)
    assert (swap.ticket.owns_swap, swap.ticket.decision_ms) == (True, 0.0)
    with pytest.raises(Busy, match=r"^timed out waiting for another model swap to finish$"):
        s.sync_slot(time.monotonic() + 0.05)
    # A served as a hit without a re-read: at once; another version of A is not a hit
    assert s.sync_slot(time.monotonic() + 0.05, model="A", version="v1") is None
    with pytest.raises(Busy):
        s.sync_slot(time.monotonic() + 0.05, model="A", version="v2")
    swap.abort(synced=True)


def test_unpin_unpins_both_tiers_and_says_whether_the_worker_holds_the_model():
    s = state(capacity=3, loaded=2)
    serve(s, "A", pin=True).release()
    assert s.cache.is_pinned("A") and s.resident.is_pinned("A")
    assert s.unpin("Z") is False
    assert s.unpin("A") is True
    assert not s.cache.is_pinned("A") and not s.resident.is_pinned("A")


def test_an_unload_on_request_unpins_and_evicts_nothing():
    s = state(capacity=3, loaded=2)
    serve(s, "A", pin=True).release()
    serve(s, "B").release()  # no version: evicting it forgets nothing that is not there
    swap = s.take_away("A", Action.UNLOAD, time.monotonic() + 1)
    assert (swap.decision.evicted, swap.decision.unloaded) == ((), ("A",))
    assert 0 <= swap.ticket.decision_ms < 60_000
    assert s.gate.changing("A") and not s.gate.changing("B")
    swap.commit(hit=False)
    assert "A" in s.cache and not s.cache.is_pinned("A")
    evict = s.take_away("B", Action.EVICT, time.monotonic() + 1)
    assert evict.decision.evicted == ("B",)
    evict.abort(synced=True)


def test_a_background_change_marks_what_it_changes_and_can_be_aborted():
    s = state(capacity=3, loaded=1)
    serve(s, "A").release()
    swap = s.background(plan_load("B"), "v9")
    assert (swap.ticket.owns_swap, swap.ticket.decision_ms, swap.ticket.version) == (
        True,
        0.0,
        "v9",
    )
    assert s.gate.changing("A") and s.gate.changing("B")
    swap.abort(synced=True)
    assert not s.gate.changing("B") and s.gate.slot_free


def test_a_pin_refusal_lists_every_pinned_model():
    s = state(capacity=5, loaded=5, loaded_bytes=100, cache_bytes=1000)
    serve(s, "A", size=300, footprint=10, pin=True).release()
    serve(s, "B", size=300, footprint=10, pin=True).release()
    with pytest.raises(PinConflict, match=r"\(pinned: A,B\)$"):
        begin(s, "C", 1, size=401, footprint=10, pin=True)
    t = state(capacity=2, loaded=2)
    serve(t, "A", pin=True).release()
    serve(t, "B", pin=True).release()
    with pytest.raises(PinConflict, match=r"which holds 2 \(pinned: A,B\)$"):
        begin(t, "C", 1, pin=True)


# WorkerView's own grants (core/worker_view.py): what a hit and a commit carry and record.


def test_a_hit_carries_the_requests_version_keep_alive_and_pin():
    s = state(capacity=3, loaded=2)
    serve(s, "A", version="v1").release()
    hit = begin(s, "A", version="v1", keep_alive=7, pin=True)
    assert isinstance(hit, Hit)
    ticket = hit.ticket
    assert ticket.decision == Decision("A", Action.ALREADY_LOADED)
    assert (ticket.owns_swap, ticket.version, ticket.keep_alive, ticket.pin) == (
        False,
        "v1",
        7,
        True,
    )
    assert 0 <= ticket.decision_ms < 60_000
    hit.release()


def test_a_load_records_its_version_and_another_version_is_loaded_again():
    s = state(capacity=3, loaded=2)
    swap = begin(s, "A", version="v1")
    assert swap.commit(hit=False) is None  # no generation asked for: no hit
    same = begin(s, "A", version="v1")
    assert isinstance(same, Hit)
    same.release()
    other = begin(s, "A", version="v2")
    assert isinstance(other, Swap) and other.decision.evicted == ("A",)
    other.commit(hit=False)


def test_a_commit_without_a_hit_pins_only_what_was_asked_to_be_pinned():
    s = state(capacity=3, loaded=2)
    begin(s, "A", pin=True).commit(hit=False)
    begin(s, "B").commit(hit=False)
    assert s.cache.is_pinned("A") and s.resident.is_pinned("A")
    assert not s.cache.is_pinned("B") and not s.resident.is_pinned("B")


def test_a_hit_with_keep_alive_sets_its_models_time_in_memory():
    clock = FakeClock()
    s = state(capacity=3, loaded=3, clock=clock)
    serve(s, "A").release()
    serve(s, "B").release()
    hit = begin(s, "A", keep_alive=2)
    assert isinstance(hit, Hit)
    hit.release()
    clock.advance(2)
    sweep = s.sweep()
    assert sweep.decision.unloaded == ("A",)  # B keeps the policy's ttl (5 s)
    sweep.commit(hit=False)


def test_a_keep_alive_is_forgotten_when_its_model_leaves_memory_by_any_way():
    clock = FakeClock()
    s = state(capacity=4, loaded=3, clock=clock)
    serve(s, "A", keep_alive=1).release()
    serve(s, "B", keep_alive=50).release()
    serve(s, "C", keep_alive=60).release()
    assert [s.keep_alive_of(m) for m in "ABC"] == [1, 50, 60]
    clock.advance(1)
    s.sweep().commit(hit=False)  # A's time is up
    assert [s.keep_alive_of(m) for m in "ABC"] == [None, 50, 60]
    s.take_away("B", Action.UNLOAD, time.monotonic() + 1).commit(hit=False)
    assert [s.keep_alive_of(m) for m in "ABC"] == [None, None, 60]
    s.hold("C", time.monotonic() + 1).abort(synced=False)  # a failed re-read: C unknown
    assert s.keep_alive_of("C") is None and "C" not in s.cache


def test_an_unload_on_request_owns_its_swap_and_waits_for_another_swap_bounded():
    s = state(capacity=3, loaded=2)
    serve(s, "A").release()
    held = s.hold("B", time.monotonic() + 1)
    with pytest.raises(Busy, match=r"^timed out waiting for another model swap to finish$"):
        s.take_away("A", Action.UNLOAD, time.monotonic() + 0.05)
    held.commit(hit=False)
    swap = s.take_away("A", Action.UNLOAD, time.monotonic() + 1)
    assert swap.ticket.owns_swap is True and swap.owns_swap
    swap.commit(hit=False)


def test_a_request_that_waited_for_its_turn_gets_a_hit_with_its_own_values():
    s = state(capacity=3, loaded=2)
    serve(s, "A", version="v1").release()
    held = s.hold("A", time.monotonic() + 1)  # A is being re-read: its hits queue
    t, late = in_thread(lambda: begin(s, "A", 10, version="v1", keep_alive=9, pin=True))
    assert wait_until(lambda: len(s.scheduler) == 1)
    assert t.is_alive()
    held.commit(hit=False)
    t.join(10)
    hit = late["value"]
    assert isinstance(hit, Hit)
    assert (hit.ticket.version, hit.ticket.keep_alive, hit.ticket.pin) == ("v1", 9, True)
    assert s.keep_alive_of("A") == 9  # during the generation too
    assert s.cache.is_pinned("A") and s.resident.is_pinned("A")
    hit.release()


def test_a_request_waiting_for_the_slot_gives_up_at_its_deadline_saying_why():
    s = state(capacity=3, loaded=1)
    serve(s, "A").release()
    held = s.hold("A", time.monotonic() + 1)
    with pytest.raises(Busy, match=r"^timed out waiting for another model swap to finish$"):
        begin(s, "B", 0.05)
    held.commit(hit=False)


def test_a_hits_keep_alive_is_known_while_it_generates():
    s = state(capacity=3, loaded=2)
    serve(s, "A").release()
    with begin(s, "A", keep_alive=7) as hit:
        assert isinstance(hit, Hit) and s.keep_alive_of("A") == 7
    with begin(s, "A", keep_alive=0) as hit:
        assert s.keep_alive_of("A") is None  # 0 applies when it ends, not while it runs


def test_a_request_while_another_models_time_is_up_sweeps_it_in_its_own_swap():
    clock = FakeClock()
    s = state(capacity=3, loaded=3, clock=clock)
    serve(s, "A").release()
    serve(s, "B", keep_alive=1).release()
    clock.advance(1)
    grant = begin(s, "A")
    assert isinstance(grant, Swap)  # the lazy sweep: not a hit while B's time is up
    assert grant.decision.model == "A" and grant.decision.unloaded == ("B",)
    grant.commit(hit=False)
    with begin(s, "A") as hit:
        assert isinstance(hit, Hit)


@pytest.mark.parametrize("end", ["commit", "stopped"])
def test_a_request_after_a_background_swap_ended_is_served(end):
    """A request for another model stops a running background swap; one that ended
    (committed, or stopped midway) is gone, and the request is served as usual."""
    s = state(capacity=3, loaded=1)
    swap = s.background(plan_load("B"))
    if end == "commit":
        swap.commit(hit=False)
    else:
        s.stopped(swap)
    grant = begin(s, "C")
    assert isinstance(grant, Swap) and grant.decision.model == "C"
    grant.commit().release()
    assert s.resident.members() == ["C"]


def test_the_idle_keep_hook_keeps_a_model_without_a_keep_alive_longer():
    """Once a generation ends, ``idle_keep`` (the prewarmer's histogram tail) sets how long
    the model stays where that is longer than the policy's TTL (5 s); a request's own
    keep_alive wins, and a model the hook knows nothing of keeps the policy's."""
    s = state("ttl", capacity=3, loaded=2)
    s.idle_keep = lambda model: {"A": 60.0, "B": 2.0}.get(model)
    serve(s, "A").release()
    assert (s.resident.ttl_of("A"), s.cache.ttl_of("A")) == (60.0, 60.0)
    serve(s, "B").release()
    assert s.resident.ttl_of("B") == 5.0  # 2 s is shorter than the policy's: not taken
    serve(s, "A", keep_alive=3.0).release()
    assert s.resident.ttl_of("A") == 3.0


def test_a_swap_that_waited_reports_its_wait_in_milliseconds():
    """B waits while A, the one model loaded, generates for at least 50 ms: its decision
    time counts that wait, in milliseconds (and within its 10 s deadline)."""
    s = state(capacity=3, loaded=1)
    lease = serve(s, "A")
    t, result = in_thread(lambda: begin(s, "B", 10))
    assert wait_until(lambda: len(s.scheduler) == 1)
    time.sleep(0.05)
    lease.release()
    t.join(10)
    swap = result["value"]
    assert 50 <= swap.ticket.decision_ms < 10_000
    swap.commit(hit=False)


def test_a_swap_that_must_unload_a_generating_model_times_out_naming_it():
    s = state(capacity=3, loaded=1)
    lease = serve(s, "A")
    with pytest.raises(Busy, match=r"^timed out waiting for running generations on A$"):
        begin(s, "B", 0.05)
    lease.release()
    serve(s, "B").release()  # the slot was given back


def test_a_running_background_swap_is_stopped_by_a_request_for_another_model_only():
    s = state(capacity=3, loaded=1)
    swap = s.background(plan_load("B"))
    same, got_same = in_thread(lambda: begin(s, "B", 10))
    assert wait_until(lambda: len(s.scheduler) == 1)
    assert not swap.stopping.is_set()  # B's own request waits for it
    other, got_other = in_thread(lambda: begin(s, "C", 10))
    assert wait_until(swap.stopping.is_set)
    swap.commit(hit=False)
    for thread, got in ((same, got_same), (other, got_other)):
        thread.join(10)
        grant = got["value"]
        (grant.commit() if isinstance(grant, Swap) else grant).release()


def test_a_new_view_is_unsynced_until_the_worker_reported():
    from model_store_server.core.worker_view import WorkerView
    from model_store_server.policies import Tier, create_policy

    cache = create_policy("lru", capacity=2, ttl=5.0)
    view = WorkerView(cache, create_policy("lru", capacity=1, ttl=5.0, tier=Tier.RESIDENT))
    assert view.background(nothing_taken) is None


def test_a_request_without_sizes_counts_no_bytes_and_a_too_large_one_is_named():
    from model_store_server.core.worker_view import TooLarge

    s = state(capacity=3, loaded=2, cache_bytes=1000, loaded_bytes=100)
    serve(s, "A").release()
    assert (s.cache.used_bytes, s.resident.used_bytes) == (0, 0)
    with pytest.raises(TooLarge) as err:
        begin(s, "B", 1, size=1001)
    assert str(err.value) == "B needs 1001 bytes, more than MAX_CACHE_BYTES=1000 on its own"


def test_a_swap_that_must_unload_two_generating_models_names_both():
    s = state(capacity=3, loaded=2, loaded_bytes=100)
    leases = [serve(s, name, footprint=50) for name in ("A", "B")]
    with pytest.raises(Busy, match=r"^timed out waiting for running generations on A,B$"):
        begin(s, "C", 0.05, footprint=100)
    for lease in leases:
        lease.release()


@pytest.mark.parametrize("cached", [False, True])
def test_a_background_load_stopped_midway_leaves_its_model_out_and_the_view_synced(cached):
    """A prewarm of B cut before B reached the worker: A's unload stays done, B is not
    resident, and its file is kept only if it was cached before (a push cut midway leaves
    nothing on the worker); the slot is free and the view synced for the next change."""
    s = state(capacity=3, loaded=1)
    if cached:
        serve(s, "B", version="v1").release()
    serve(s, "A").release()
    swap = s.background(plan_load("B"), "v1")
    expected = Action.LOAD_FROM_LOCAL_STORE if cached else Action.LOAD_FROM_STORE
    assert swap.decision.action is expected and swap.decision.unloaded == ("A",)
    s.stopped(swap)
    assert s.resident.members() == []
    assert ("B" in s.cache) is cached and "A" in s.cache
    again = s.background(plan_load("B"), "v1")  # synced, slot free: it may be tried again
    assert again is not None and again.decision.action is expected
    again.commit(hit=False)
    assert s.resident.members() == ["B"]
