"""The pure decision and reconciliation, without any server."""

from __future__ import annotations

from model_store_server.cache_policy import create_policy
from model_store_server.decision import Action, decide
from model_store_server.state import reconcile
from tests.conftest import FakeClock


def policy(name="lru", clock=None, capacity=2, ttl=5.0):
    return create_policy(name, capacity=capacity, ttl=ttl, clock=clock or FakeClock())


def test_lru_sequence_actions():
    p = policy()
    loaded = None
    seen = []
    for model in ["A", "A", "B", "C", "A"]:
        d = decide(p, model, loaded)
        seen.append((d.action, d.evicted))
        loaded = model
    assert seen == [
        (Action.LOAD_FROM_STORE, ()),
        (Action.ALREADY_LOADED, ()),
        (Action.LOAD_FROM_STORE, ()),
        (Action.LOAD_FROM_STORE, ("A",)),
        (Action.LOAD_FROM_STORE, ("B",)),
    ]


def test_cached_but_not_loaded_is_load_from_local_store():
    p = policy()
    decide(p, "A", None)
    decide(p, "B", "A")
    d = decide(p, "A", "B")
    assert d.action is Action.LOAD_FROM_LOCAL_STORE
    assert d.evicted == ()
    assert d.replaces("B")


def test_no_evict_rejects_without_evicting():
    p = policy("no-evict")
    decide(p, "A", None)
    decide(p, "B", "A")
    d = decide(p, "C", "B")
    assert d.action is Action.REJECTED
    assert d.evicted == ()
    assert not d.changes_worker
    assert p.members() == ["A", "B"]


def test_ttl_sweep_before_hit_reloads_expired_loaded_model():
    clock = FakeClock()
    p = policy("ttl", clock)
    decide(p, "A", None)
    clock.advance(6)
    d = decide(p, "A", "A")
    assert d.action is Action.LOAD_FROM_STORE
    assert d.evicted == ("A",)


def test_hit_with_other_expired_members_keeps_loaded():
    clock = FakeClock()
    p = policy("ttl", clock)
    decide(p, "A", None)
    clock.advance(3)
    decide(p, "B", "A")
    clock.advance(3)  # A idle 6s, B idle 3s
    d = decide(p, "B", "B")
    assert d.action is Action.ALREADY_LOADED
    assert d.evicted == ("A",)
    assert d.changes_worker and not d.replaces("B")


def test_reconcile_drops_members_the_worker_lost():
    p = policy()
    decide(p, "A", None)
    decide(p, "B", "A")
    to_delete, loaded = reconcile(p, ["B"], None)
    assert to_delete == [] and loaded is None
    assert p.members() == ["B"]


def test_reconcile_adopts_worker_files_loaded_last_and_enforces_capacity():
    p = policy(capacity=2)
    to_delete, loaded = reconcile(p, ["A", "B", "C"], "A")
    assert loaded == "A"
    assert to_delete == ["B"]
    assert p.members() == ["C", "A"]


def test_reconcile_no_evict_refuses_extra_files():
    p = policy("no-evict", capacity=1)
    to_delete, loaded = reconcile(p, ["A", "B"], None)
    assert to_delete == ["B"]
    assert p.members() == ["A"]
    assert loaded is None
