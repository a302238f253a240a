"""WorkerView's concurrency rules, exercised with real threads and no servers.

Views here use ``max_wait=0`` (strict arrival order) unless a test says otherwise;
the scheduler's own rule is tested in ``test_scheduler.py``.
"""

from __future__ import annotations

import threading
import time

import pytest

from model_store_server.core.gate import Busy
from model_store_server.core.grants import Hit, Swap
from model_store_server.core.view_control import PinConflict
from model_store_server.core.worker_view import Rejected, TooLarge, WorkerView
from model_store_server.decision import Action
from model_store_server.policies import Tier, create_policy
from tests.conftest import FakeClock


def state(name="lru", capacity=2, loaded=1, clock=None, max_wait=0.0, **bytes_bounds):
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
    s = WorkerView(cache, resident, max_wait=max_wait)
    with s.exclusive(time.monotonic() + 1) as exclusive:
        exclusive.end(synced=True)
    return s


def begin(s: WorkerView, model: str, timeout: float = 5, **kwargs) -> Hit | Swap:
    return s.admit(model, time.monotonic() + timeout, **kwargs)


def serve(s: WorkerView, model: str, **kwargs) -> Hit:
    """Admit, commit the swap if any; returns the generation's Hit."""
    grant = begin(s, model, **kwargs)
    return grant.commit() if isinstance(grant, Swap) else grant


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
    first = begin(s, "A", 5)
    assert first.owns_swap and first.decision.action is Action.LOAD_FROM_STORE
    t, result = in_thread(lambda: begin(s, "A", 5))
    time.sleep(0.05)
    assert t.is_alive(), "second request must wait for the swap in progress"
    first.commit()
    t.join(5)
    assert result["value"].decision.action is Action.ALREADY_LOADED
    assert not result["value"].owns_swap and isinstance(result["value"], Hit)


def test_swap_waits_for_running_generation():
    s = state()
    lease = serve(s, "A")
    order = []

    def other():
        ticket = begin(s, "B", 5)
        order.append("swap-decided")
        ticket.commit()

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
        begin(s, "B", 0.1)
    assert s.cache.members() == ["A"]
    assert s.snapshot().loaded == "A" and not s.snapshot().swapping
    # the resident model is still served at once while the swap gave up
    ticket = begin(s, "A", 1)
    assert not ticket.owns_swap and ticket.decision.action is Action.ALREADY_LOADED


def test_ttl_never_expires_a_model_that_is_generating():
    clock = FakeClock()
    s = state("ttl", clock=clock)
    first = serve(s, "A")  # generating on A
    clock.advance(60)
    ticket = begin(s, "A", 1)
    assert ticket.decision.action is Action.ALREADY_LOADED
    assert ticket.decision.evicted == ()
    first.release()
    ticket.release()
    clock.advance(4)  # idle time counts from the end of the last generation
    assert begin(s, "A", 1).decision.action is Action.ALREADY_LOADED


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
    t2, late = in_thread(lambda: begin(s, "A", 5))
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
    pending = begin(s, "B", 5)  # B's push is "in progress"
    assert pending.owns_swap
    started = time.monotonic()
    hit = begin(s, "A", 5)
    assert hit.decision.action is Action.ALREADY_LOADED and not hit.owns_swap
    assert time.monotonic() - started < 1
    t, result = in_thread(lambda: begin(s, "B", 5))  # B itself waits
    time.sleep(0.05)
    assert t.is_alive()
    pending.commit().release()
    t.join(5)
    assert result["value"].decision.action is Action.ALREADY_LOADED
    hit.release()


def test_unloading_x_waits_only_for_x():
    s = state(capacity=3, loaded=2)
    lease_a = serve(s, "A")
    lease_b = serve(s, "B")  # A and B resident, both generating
    t, result = in_thread(lambda: begin(s, "C", 5))
    time.sleep(0.05)
    assert t.is_alive(), "both resident models are in use: C waits"
    lease_b.release()  # B is idle now: C unloads B without waiting for A
    t.join(5)
    ticket = result["value"]
    assert ticket.decision.unloaded == ("B",) and ticket.decision.action is Action.LOAD_FROM_STORE
    assert s.snapshot().generating_by_model == {"A": 1}
    ticket.commit().release()
    assert [m.name for m in s.snapshot().resident] == ["A", "C"]
    lease_a.release()


def test_rejection_does_not_wait_for_generations():
    s = state("no-evict")
    serve(s, "A").release()
    serve(s, "B")  # lease on B stays held
    started = time.monotonic()
    with pytest.raises(Rejected) as refused:
        begin(s, "C", 5)
    assert refused.value.ticket.decision.action is Action.REJECTED
    assert time.monotonic() - started < 1 and s.gate.slot_free


def test_a_model_larger_than_a_budget_changes_nothing():
    s = state(capacity=3, loaded=3, loaded_bytes=100, cache_bytes=1000)
    serve(s, "A", size=10, footprint=50).release()
    with pytest.raises(TooLarge, match="MAX_LOADED_BYTES=100"):
        begin(s, "B", 1, size=10, footprint=101)
    with pytest.raises(TooLarge, match="MAX_CACHE_BYTES=1000"):
        begin(s, "B", 1, size=1001, footprint=1)
    assert s.cache.members() == ["A"] and not s.snapshot().swapping


def test_pinning_more_than_fits_is_refused():
    s = state(capacity=3, loaded=2)
    serve(s, "A", pin=True).release()
    serve(s, "B", pin=True).release()
    with pytest.raises(PinConflict, match="holds 2"):
        begin(s, "C", 1, pin=True)
    # every resident model is pinned: another model is rejected, naming the pins
    with pytest.raises(Rejected, match="pinned: A,B"):
        begin(s, "C", 1)
    assert s.unpin("A")
    ticket = begin(s, "C", 1)
    assert ticket.decision.unloaded == ("A",)


def test_keep_alive_applies_when_the_generation_ends():
    clock = FakeClock()
    s = state(capacity=3, loaded=3, clock=clock)
    lease = serve(s, "A", keep_alive=0)
    assert s.sweep() is None  # generating: never idle
    lease.release()
    sweep = s.sweep()
    assert sweep.decision.unloaded == ("A",)
    sweep.commit(hit=False)
    assert s.cache.members() == ["A"] and s.snapshot().resident == ()

    serve(s, "B", keep_alive=30).release()
    serve(s, "C", keep_alive=-1).release()
    clock.advance(29)
    assert s.sweep() is None
    clock.advance(1)
    sweep = s.sweep()
    assert sweep.decision.unloaded == ("B",)
    sweep.commit(hit=False)
    clock.advance(10**6)
    assert s.sweep() is None  # -1: only capacity takes C away
    assert [m.name for m in s.snapshot().resident] == ["C"]


def test_explicit_unload_waits_for_that_models_generations():
    s = state(capacity=3, loaded=2)
    lease = serve(s, "A")
    t, result = in_thread(lambda: s.take_away("A", Action.UNLOAD, time.monotonic() + 5))
    time.sleep(0.05)
    assert t.is_alive()
    lease.release()
    t.join(5)
    ticket = result["value"]
    assert ticket.owns_swap and ticket.decision.unloaded == ("A",)
    ticket.commit(hit=False)
    assert s.cache.members() == ["A"] and s.snapshot().resident == ()
    assert s.take_away("A", Action.UNLOAD, time.monotonic() + 1) is None  # nothing to do


class Boom(BaseException):
    """Not even an Exception: the slot must still be given back."""


@pytest.mark.parametrize("error", [TypeError, KeyError, OSError, MemoryError, Boom])
def test_any_failure_inside_a_swap_ends_the_slot_unsynced(error):
    s = state()
    swap = begin(s, "A", 5)
    with pytest.raises(error), swap:
        raise error("while carrying the decision out")
    snapshot = s.snapshot()
    assert not snapshot.swapping and not snapshot.synced
    assert snapshot.cached == () and snapshot.loaded is None  # "A" was never confirmed
    assert snapshot.generating == 0
    assert begin(s, "B", 0.1).owns_swap  # the next request does not wait


def test_a_swap_left_without_commit_grants_nothing():
    """Review: leaving a swap's block normally used to grant a lease nobody collected."""
    s = state()
    with begin(s, "A", 5) as swap:
        pass
    with pytest.raises(RuntimeError):
        swap.commit()  # given back already
    swap.abort(synced=True)  # a second end is ignored
    snapshot = s.snapshot()
    assert snapshot.loaded is None and snapshot.generating == 0 and not snapshot.swapping
    assert s.gate.idle


def test_a_committed_swap_grants_one_hit():
    s = state()
    with begin(s, "A", 5) as swap:
        hit = swap.commit()
    assert s.snapshot().loaded == "A" and s.snapshot().generating == 1
    hit.release()
    hit.release()
    assert s.gate.idle


def test_exclusive_slot_keeps_or_drops_the_sync_flag():
    s = state()
    with s.exclusive(time.monotonic() + 1) as slot:
        slot.end(synced=True)
    assert s.synced and not s.snapshot().swapping
    with pytest.raises(KeyError), s.exclusive(time.monotonic() + 1):
        raise KeyError("worker report")
    assert not s.synced and not s.snapshot().swapping


def test_exclusive_waits_for_generations_and_is_bounded():
    s = state()
    lease = serve(s, "A")  # a generation holds a lease
    with pytest.raises(Busy):
        s.exclusive(time.monotonic() + 0.05)
    assert not s.snapshot().swapping
    lease.release()
    with s.exclusive(time.monotonic() + 1):
        assert s.snapshot().swapping


# -- found in review ----------------------------------------------------------------------


def test_a_hit_does_not_wait_for_a_swap_even_when_another_models_time_is_up():
    clock = FakeClock()
    s = state(capacity=4, loaded=3, clock=clock)
    for model in "ABX":
        serve(s, model).release()
    serve(s, "X", keep_alive=0).release()  # X's time is up at once
    pending = begin(s, "C", 5)  # a swap in progress (it also unloads X)
    assert pending.owns_swap
    hit = begin(s, "A", 0.2)
    assert hit.decision.action is Action.ALREADY_LOADED and not hit.owns_swap
    hit.release()
    pending.commit().release()


def test_a_sync_or_reset_stops_new_hits_until_it_ends():
    s = state()
    serve(s, "A").release()
    with s.exclusive(time.monotonic() + 1), pytest.raises(Busy):
        begin(s, "A", 0.1)
    assert begin(s, "A", 1).decision.action is Action.ALREADY_LOADED


def test_keep_alive_forever_ends_when_the_model_leaves_memory():
    clock = FakeClock()
    s = state("ttl", capacity=3, loaded=1, clock=clock)
    serve(s, "A", keep_alive=-1).release()
    clock.advance(100)
    assert s.sweep() is None and s.cache.members() == ["A"]
    serve(s, "B").release()  # B takes A's place in memory: A's file follows the TTL again
    assert s.keep_alive_of("A") is None
    clock.advance(6)
    ticket = begin(s, "B", 1)
    assert "A" in ticket.decision.evicted


def test_a_request_rescues_a_model_whose_keep_alive_ran_out_before_the_sweep():
    s = state(capacity=3, loaded=2)
    serve(s, "A", keep_alive=0).release()
    ticket = begin(s, "A", 1)
    assert ticket.decision.action is Action.ALREADY_LOADED and ticket.decision.unloaded == ()
    ticket.release()


# -- failure isolation (review) -------------------------------------------------------------


def test_a_failed_stream_puts_only_its_model_in_doubt():
    """Before: a stream failure marked the whole view unsynced, and the next request
    took the worker exclusively, waiting for every generation on every model."""
    s = state(capacity=3, loaded=2)
    hit_b = serve(s, "B")  # a long generation on B
    serve(s, "A").release()
    s.suspect("A")  # A's stream broke off
    assert s.synced
    started = time.monotonic()
    other = begin(s, "B", 0.5)  # B is served at once
    assert isinstance(other, Hit)
    other.release()
    with s.hold("A", time.monotonic() + 0.5) as swap:  # waits for A's generations only
        s.confirm("A", cached=["A", "B"], resident=["B"])  # the worker lost A from memory
        swap.commit(hit=False)
    assert time.monotonic() - started < 1
    assert not s.is_suspect("A") and [m.name for m in s.snapshot().resident] == ["B"]
    grant = begin(s, "A", 1)
    assert grant.decision.action is Action.LOAD_FROM_LOCAL_STORE
    grant.commit().release()
    hit_b.release()
    assert s.gate.idle


def test_a_re_read_waits_only_for_the_models_it_takes_away():
    """A stale view is re-read holding the slot: generations on A go on, a hit on B is
    served meanwhile, and only a report that takes A away waits for A's generation."""
    s = state(capacity=3, loaded=2)
    serve(s, "B").release()
    hit_a = serve(s, "A")  # a long stream on A
    s.mark_unsynced()
    slot = s.sync_slot(time.monotonic() + 0.05)  # granted at once: A's stream is no obstacle
    assert slot is not None and s.gate.slot == "swap"
    with begin(s, "B", 0.05) as hit_b:  # a hit on B while the slot is held
        assert hit_b.decision.action is Action.ALREADY_LOADED
    # The worker holds one model more than MAX_LOADED_MODELS: A, its least recently used,
    # is to be unloaded, and leaves the view; the re-read waits for A's generation only.
    report = {"A": 1, "B": 1, "C": 1}
    assert s.apply_worker_report(report, report) == ([], ["A"])
    assert s.synced
    with pytest.raises(Busy):
        s.wait_ended(["A"], time.monotonic() + 0.05)
    with begin(s, "B", 0.05) as hit_b:
        assert hit_b.decision.action is Action.ALREADY_LOADED
    hit_a.release()
    s.wait_ended(["A"], time.monotonic() + 1)
    slot.abort(synced=True)
    assert s.synced and s.gate.idle


def test_a_re_read_lets_a_resident_model_pass_while_a_swap_runs():
    s = state(capacity=3, loaded=2)
    serve(s, "B").release()
    swap = begin(s, "C", 1)  # a swap holds the slot
    assert swap.owns_swap
    s.mark_unsynced()
    assert s.sync_slot(time.monotonic() + 0.05, "B") is None  # B is a hit: no re-read needed
    with pytest.raises(Busy):
        s.sync_slot(time.monotonic() + 0.05, "D")  # D needs the slot: it waits for the swap
    swap.abort(synced=True)
    slot = s.sync_slot(time.monotonic() + 0.05, "D")
    assert slot is not None
    slot.abort(synced=False)
    assert not s.synced and s.gate.slot_free


def test_unloading_a_model_that_is_not_resident_changes_nothing():
    """Before: a 404 from POST /models/X/unload had unpinned X first."""
    s = state(capacity=3, loaded=2)
    serve(s, "A", pin=True).release()
    s.confirm("A", cached=["A"], resident=[])  # the worker dropped A from memory
    assert s.cache.is_pinned("A") and "A" not in s.resident
    assert s.take_away("A", Action.UNLOAD, time.monotonic() + 1) is None
    assert s.cache.is_pinned("A") and s.gate.idle
