"""An explicit unload under steady traffic: the model being taken away admits no new
generation, so the unload finishes instead of timing out (real threads, no servers)."""

from __future__ import annotations

import threading
import time

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
