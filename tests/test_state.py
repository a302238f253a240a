"""WorkerState's concurrency rules, exercised with real threads and no servers."""

from __future__ import annotations

import threading
import time

import pytest

from model_store_server.cache_policy import Tier, create_policy
from model_store_server.decision import Action
from model_store_server.state import Busy, TooLarge, WorkerState
from model_store_server.state_control import PinConflict
from tests.conftest import FakeClock


def state(name="lru", capacity=2, loaded=1, clock=None, **bytes_bounds):
    clock = clock or time.monotonic
    cache = create_policy(
        name, capacity=capacity, ttl=5.0, clock=clock, max_bytes=bytes_bounds.get("cache_bytes")
    )
    resident = create_policy(
        name,
        capacity=loaded,
        ttl=5.0,
        clock=clock,
        tier=Tier.RESIDENT,
        max_bytes=bytes_bounds.get("loaded_bytes"),
    )
    s = WorkerState(cache, resident)
    s._synced = True
    return s


def serve(s: WorkerState, model: str, **kwargs):
    """Begin, carry the swap out if any; returns the generation lease."""
    ticket = s.begin(model, timeout=5, **kwargs)
    if ticket.owns_swap:
        return s.swap(ticket).commit()
    return ticket.lease


def in_thread(fn):
    result = {}

    def run():
        try:
            result["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed to the test
            result["error"] = err

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def test_second_request_waits_for_swap_and_sees_already_loaded():
    s = state()
    first = s.begin("A", timeout=5)
    assert first.owns_swap and first.decision.action is Action.LOAD_FROM_STORE
    t, result = in_thread(lambda: s.begin("A", timeout=5))
    time.sleep(0.05)
    assert t.is_alive(), "second request must wait for the swap in progress"
    s.swap(first).commit()
    t.join(5)
    assert result["value"].decision.action is Action.ALREADY_LOADED
    assert not result["value"].owns_swap and result["value"].lease is not None


def test_swap_waits_for_running_generation():
    s = state()
    lease = serve(s, "A")
    order = []

    def other():
        ticket = s.begin("B", timeout=5)
        order.append("swap-decided")
        s.swap(ticket).commit()

    t = threading.Thread(target=other)
    t.start()
    time.sleep(0.05)
    assert t.is_alive()
    order.append("generation-done")
    lease.release()
    t.join(5)
    assert order == ["generation-done", "swap-decided"]
    assert s.snapshot().loaded == "B"


def test_a_lease_is_released_exactly_once():
    s = state()
    lease = serve(s, "A")
    other = serve(s, "A")
    lease.release()
    lease.release()
    assert s.snapshot().generating == 1
    other.release()
    assert s.snapshot().generating == 0


def test_swap_wait_is_bounded_and_changes_nothing():
    s = state()
    serve(s, "A")
    with pytest.raises(Busy):
        s.begin("B", timeout=0.1)
    assert s.cache.members() == ["A"]
    assert s.snapshot().loaded == "A" and not s.snapshot().swapping
    # the resident model is still served at once while the swap gave up
    ticket = s.begin("A", timeout=1)
    assert not ticket.owns_swap and ticket.decision.action is Action.ALREADY_LOADED


def test_ttl_never_expires_a_model_that_is_generating():
    clock = FakeClock()
    s = state("ttl", clock=clock)
    first = serve(s, "A")  # generating on A
    clock.advance(60)
    ticket = s.begin("A", timeout=1)
    assert ticket.decision.action is Action.ALREADY_LOADED
    assert ticket.decision.evicted == ()
    first.release()
    ticket.lease.release()
    clock.advance(4)  # idle time counts from the end of the last generation
    assert s.begin("A", timeout=1).decision.action is Action.ALREADY_LOADED


def test_new_hits_wait_behind_a_pending_swap():
    """A swap waiting for A's generations blocks new A requests (no starvation)."""
    s = state()
    lease_a = serve(s, "A")
    swapped = threading.Event()

    def swapper():
        lease = serve(s, "B")
        swapped.set()
        return lease

    t, swap_result = in_thread(swapper)
    time.sleep(0.05)
    t2, late = in_thread(lambda: s.begin("A", timeout=5))
    time.sleep(0.05)
    assert "value" not in late
    lease_a.release()
    t.join(5)
    assert swapped.is_set()
    swap_result["value"].release()  # the swapper's lease on B
    t2.join(5)
    assert late["value"].decision.action is Action.LOAD_FROM_LOCAL_STORE


def test_hit_on_a_resident_model_does_not_wait_for_another_models_swap():
    s = state(capacity=3, loaded=2)
    serve(s, "A").release()
    pending = s.begin("B", timeout=5)  # B's push is "in progress"
    assert pending.owns_swap
    started = time.monotonic()
    hit = s.begin("A", timeout=5)
    assert hit.decision.action is Action.ALREADY_LOADED and not hit.owns_swap
    assert time.monotonic() - started < 1
    t, result = in_thread(lambda: s.begin("B", timeout=5))  # B itself waits
    time.sleep(0.05)
    assert t.is_alive()
    s.swap(pending).commit().release()
    t.join(5)
    assert result["value"].decision.action is Action.ALREADY_LOADED
    hit.lease.release()


def test_unloading_x_waits_only_for_x():
    s = state(capacity=3, loaded=2)
    lease_a = serve(s, "A")
    lease_b = serve(s, "B")  # A and B resident, both generating
    t, result = in_thread(lambda: s.begin("C", timeout=5))
    time.sleep(0.05)
    assert t.is_alive(), "both resident models are in use: C waits"
    lease_b.release()  # B is idle now: C unloads B without waiting for A
    t.join(5)
    ticket = result["value"]
    assert ticket.decision.unloaded == ("B",) and ticket.decision.action is Action.LOAD_FROM_STORE
    assert s.snapshot().generating_by_model == {"A": 1}
    s.swap(ticket).commit().release()
    assert [m.name for m in s.snapshot().resident] == ["A", "C"]
    lease_a.release()


def test_rejection_does_not_wait_for_generations():
    s = state("no-evict")
    serve(s, "A").release()
    serve(s, "B")  # lease on B stays held
    started = time.monotonic()
    ticket = s.begin("C", timeout=5)
    assert ticket.decision.action is Action.REJECTED and ticket.lease is None
    assert time.monotonic() - started < 1


def test_a_model_larger_than_a_budget_changes_nothing():
    s = state(capacity=3, loaded=3, loaded_bytes=100, cache_bytes=1000)
    serve(s, "A", size=10, footprint=50).release()
    with pytest.raises(TooLarge, match="MAX_LOADED_BYTES=100"):
        s.begin("B", timeout=1, size=10, footprint=101)
    with pytest.raises(TooLarge, match="MAX_CACHE_BYTES=1000"):
        s.begin("B", timeout=1, size=1001, footprint=1)
    assert s.cache.members() == ["A"] and not s.snapshot().swapping


def test_pinning_more_than_fits_is_refused():
    s = state(capacity=3, loaded=2)
    serve(s, "A", pin=True).release()
    serve(s, "B", pin=True).release()
    with pytest.raises(PinConflict, match="holds 2"):
        s.begin("C", timeout=1, pin=True)
    # every resident model is pinned: another model is rejected, naming the pins
    ticket = s.begin("C", timeout=1)
    assert ticket.decision.action is Action.REJECTED and "pinned: A,B" in ticket.decision.reason
    assert s.unpin("A")
    ticket = s.begin("C", timeout=1)
    assert ticket.decision.unloaded == ("A",)


def test_keep_alive_applies_when_the_generation_ends():
    clock = FakeClock()
    s = state(capacity=3, loaded=3, clock=clock)
    lease = serve(s, "A", keep_alive=0)
    assert s.begin_sweep() is None  # generating: never idle
    lease.release()
    sweep = s.begin_sweep()
    assert sweep.decision.unloaded == ("A",)
    s.swap(sweep).commit(lease=False)
    assert s.cache.members() == ["A"] and s.snapshot().resident == ()

    serve(s, "B", keep_alive=30).release()
    serve(s, "C", keep_alive=-1).release()
    clock.advance(29)
    assert s.begin_sweep() is None
    clock.advance(1)
    sweep = s.begin_sweep()
    assert sweep.decision.unloaded == ("B",)
    s.swap(sweep).commit(lease=False)
    clock.advance(10**6)
    assert s.begin_sweep() is None  # -1: only capacity takes C away
    assert [m.name for m in s.snapshot().resident] == ["C"]


def test_explicit_unload_waits_for_that_models_generations():
    s = state(capacity=3, loaded=2)
    lease = serve(s, "A")
    t, result = in_thread(lambda: s.begin_change("A", Action.UNLOAD, timeout=5))
    time.sleep(0.05)
    assert t.is_alive()
    lease.release()
    t.join(5)
    ticket = result["value"]
    assert ticket.owns_swap and ticket.decision.unloaded == ("A",)
    s.swap(ticket).commit(lease=False)
    assert s.cache.members() == ["A"] and s.snapshot().resident == ()
    assert not s.begin_change("A", Action.UNLOAD, timeout=1).owns_swap  # nothing to do


class Boom(BaseException):
    """Not even an Exception: the slot must still be given back."""


@pytest.mark.parametrize("error", [TypeError, KeyError, OSError, MemoryError, Boom])
def test_any_failure_inside_a_swap_ends_the_slot_unsynced(error):
    s = state()
    ticket = s.begin("A", timeout=5)
    with pytest.raises(error), s.swap(ticket):
        raise error("while carrying the decision out")
    snapshot = s.snapshot()
    assert not snapshot.swapping and not snapshot.synced
    assert snapshot.cached == () and snapshot.loaded is None  # "A" was never confirmed
    assert snapshot.generating == 0
    assert s.begin("B", timeout=0.1).owns_swap  # the next request does not wait


def test_a_swap_left_normally_commits_once():
    s = state()
    ticket = s.begin("A", timeout=5)
    with s.swap(ticket) as slot:
        pass
    slot.commit()  # a second end is ignored
    slot.end(synced=False)
    snapshot = s.snapshot()
    assert snapshot.loaded == "A" and snapshot.generating == 1 and not snapshot.swapping
    slot.lease.release()


def test_a_ticket_without_the_slot_cannot_swap():
    s = state()
    serve(s, "A").release()
    ticket = s.begin("A", timeout=5)
    assert not ticket.owns_swap
    with pytest.raises(ValueError):
        s.swap(ticket)


def test_exclusive_slot_keeps_or_drops_the_sync_flag():
    s = state()
    with s.exclusive(timeout=1) as slot:
        slot.end(synced=True)
    assert s.synced and not s.snapshot().swapping
    with pytest.raises(KeyError), s.exclusive(timeout=1):
        raise KeyError("worker report")
    assert not s.synced and not s.snapshot().swapping


def test_exclusive_waits_for_generations_and_is_bounded():
    s = state()
    lease = serve(s, "A")  # a generation holds a lease
    with pytest.raises(Busy):
        s.exclusive(timeout=0.05)
    assert not s.snapshot().swapping
    lease.release()
    with s.exclusive(timeout=1):
        assert s.snapshot().swapping


# -- found in review ----------------------------------------------------------------------


def test_a_hit_does_not_wait_for_a_swap_even_when_another_models_time_is_up():
    clock = FakeClock()
    s = state(capacity=4, loaded=3, clock=clock)
    for model in "ABX":
        serve(s, model).release()
    serve(s, "X", keep_alive=0).release()  # X's time is up at once
    pending = s.begin("C", timeout=5)  # a swap in progress (it also unloads X)
    assert pending.owns_swap
    hit = s.begin("A", timeout=0.2)
    assert hit.decision.action is Action.ALREADY_LOADED and not hit.owns_swap
    hit.lease.release()
    s.swap(pending).commit().release()


def test_a_sync_or_reset_stops_new_hits_until_it_ends():
    s = state()
    serve(s, "A").release()
    with s.exclusive(timeout=1), pytest.raises(Busy):
        s.begin("A", timeout=0.1)
    assert s.begin("A", timeout=1).decision.action is Action.ALREADY_LOADED


def test_keep_alive_forever_ends_when_the_model_leaves_memory():
    clock = FakeClock()
    s = state("ttl", capacity=3, loaded=1, clock=clock)
    serve(s, "A", keep_alive=-1).release()
    clock.advance(100)
    assert s.begin_sweep() is None and s.cache.members() == ["A"]
    serve(s, "B").release()  # B takes A's place in memory: A's file follows the TTL again
    assert s.keep_alive_of("A") is None
    clock.advance(6)
    ticket = s.begin("B", timeout=1)
    assert "A" in ticket.decision.evicted


def test_a_request_rescues_a_model_whose_keep_alive_ran_out_before_the_sweep():
    s = state(capacity=3, loaded=2)
    serve(s, "A", keep_alive=0).release()
    ticket = s.begin("A", timeout=1)
    assert ticket.decision.action is Action.ALREADY_LOADED and ticket.decision.unloaded == ()
    ticket.lease.release()
