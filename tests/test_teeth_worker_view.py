"""An explicit unload under steady traffic: the model being taken away admits no new
generation, so the unload finishes instead of timing out (real threads, no servers);
then the gate's transitions read back through its public state, and a model being
swapped in seen by placement as coming in."""

from __future__ import annotations

import threading
import time

import pytest

from model_store_server.core.gate import Busy, Gate
from model_store_server.core.grants import Hit, Swap
from model_store_server.decision import Action
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
