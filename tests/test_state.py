"""WorkerState's concurrency rules, exercised with real threads and no servers."""

from __future__ import annotations

import threading
import time

import pytest

from model_store_server.cache_policy import create_policy
from model_store_server.decision import Action
from model_store_server.state import Busy, WorkerState


def state(name="lru", capacity=2):
    return WorkerState(create_policy(name, capacity=capacity, ttl=5.0))


def serve(s: WorkerState, model: str):
    ticket = s.begin(model, timeout=5)
    if ticket.owns_swap:
        s.swap(ticket).commit()
    return ticket


def test_second_request_waits_for_swap_and_sees_already_loaded():
    s = state()
    first = s.begin("A", timeout=5)
    assert first.owns_swap and first.decision.action is Action.LOAD_FROM_STORE
    result = {}

    def second():
        result["ticket"] = s.begin("A", timeout=5)

    t = threading.Thread(target=second)
    t.start()
    time.sleep(0.05)
    assert t.is_alive(), "second request must wait for the swap in progress"
    s.swap(first).commit()
    t.join(5)
    assert result["ticket"].decision.action is Action.ALREADY_LOADED
    assert not result["ticket"].owns_swap


def test_swap_waits_for_running_generation():
    s = state()
    serve(s, "A")  # holds a lease on A
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
    s.release()
    t.join(5)
    assert order == ["generation-done", "swap-decided"]
    assert s.snapshot().loaded == "B"


def test_swap_wait_is_bounded_and_changes_nothing():
    s = state()
    serve(s, "A")
    with pytest.raises(Busy):
        s.begin("B", timeout=0.1)
    assert s.policy.members() == ["A"]
    assert s.snapshot().loaded == "A" and not s.snapshot().swapping
    # the loaded model is still served at once while the swap gave up
    ticket = s.begin("A", timeout=1)
    assert not ticket.owns_swap and ticket.decision.action is Action.ALREADY_LOADED


def test_ttl_never_expires_a_model_that_is_generating():
    from tests.conftest import FakeClock

    clock = FakeClock()
    s = WorkerState(create_policy("ttl", capacity=2, ttl=5.0, clock=clock))
    serve(s, "A")  # generating on A
    clock.advance(60)
    ticket = s.begin("A", timeout=1)
    assert ticket.decision.action is Action.ALREADY_LOADED
    assert ticket.decision.evicted == ()
    s.release()
    s.release()
    clock.advance(4)  # idle time counts from the end of the last generation
    assert s.begin("A", timeout=1).decision.action is Action.ALREADY_LOADED


def test_new_hits_wait_behind_a_pending_swap():
    """A swap waiting for A's generations blocks new A requests (no starvation)."""
    s = state()
    serve(s, "A")
    swapped = threading.Event()

    def swapper():
        ticket = s.begin("B", timeout=5)
        s.swap(ticket).commit()
        swapped.set()

    t = threading.Thread(target=swapper)
    t.start()
    time.sleep(0.05)
    late = {}

    def late_hit():
        late["ticket"] = s.begin("A", timeout=5)

    t2 = threading.Thread(target=late_hit)
    t2.start()
    time.sleep(0.05)
    assert "ticket" not in late
    s.release()
    t.join(5)
    assert swapped.is_set()
    s.release()  # the swapper's lease on B
    t2.join(5)
    assert late["ticket"].decision.action is Action.LOAD_FROM_LOCAL_STORE


def test_rejection_does_not_wait_for_generations():
    s = state("no-evict")
    serve(s, "A")
    s.release()
    serve(s, "B")  # lease on B stays held
    started = time.monotonic()
    ticket = s.begin("C", timeout=5)
    assert ticket.decision.action is Action.REJECTED
    assert time.monotonic() - started < 1


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


def test_a_ticket_without_the_slot_cannot_swap():
    s = state()
    serve(s, "A")
    s.release()
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
    serve(s, "A")  # a generation holds a lease
    with pytest.raises(Busy):
        s.exclusive(timeout=0.05)
    assert not s.snapshot().swapping
    s.release()
    with s.exclusive(timeout=1):
        assert s.snapshot().swapping
