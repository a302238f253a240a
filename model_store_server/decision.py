"""The pure swap decision over the worker's two tiers: what happens for one request.

``decide`` takes the disk-tier and resident-tier policies and a request and
returns the action, the files to delete (evicted) and the models to drop from
memory only (unloaded), together with the policies as they are once that is
done. It works on copies: the caller's policies are never changed, so a
refused or abandoned decision leaves no trace. It performs no I/O and never
logs; the caller carries the decision out on the worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from model_store_server.policies import CacheFull, CachePolicy


class Action(StrEnum):
    ALREADY_LOADED = "already_loaded"
    LOAD_FROM_LOCAL_STORE = "load_from_local_store"
    LOAD_FROM_STORE = "load_from_store"
    REJECTED = "rejected"
    # Explicit control (``/models/...`` and the idle sweep), never a request's X-Cache-Action.
    UNLOAD = "unload"
    EVICT = "evict"


LOADS = (Action.LOAD_FROM_LOCAL_STORE, Action.LOAD_FROM_STORE)


@dataclass(frozen=True)
class Decision:
    model: str
    action: Action
    evicted: tuple[str, ...] = ()  # files deleted from the worker (and unloaded if resident)
    unloaded: tuple[str, ...] = ()  # dropped from memory, file kept
    reason: str = ""  # why a request was rejected
    expired: tuple[str, ...] = ()  # of evicted and unloaded: those whose time was up (TTL)

    @property
    def changes_worker(self) -> bool:
        """Whether carrying this decision out needs any call to the worker."""
        return bool(self.evicted or self.unloaded) or self.action in (*LOADS, Action.EVICT)

    @property
    def takes_away(self) -> tuple[str, ...]:
        """Models whose running generations must end before this is carried out."""
        return tuple(dict.fromkeys((*self.evicted, *self.unloaded)))

    @property
    def touches(self) -> frozenset[str]:
        """Every model this decision changes on the worker (not servable meanwhile)."""
        return frozenset((self.model, *self.evicted, *self.unloaded))

    def headers(self) -> dict[str, str]:
        """The response headers that tell a client what happened."""
        return {
            "X-Cache-Action": str(self.action),
            "X-Evicted": ",".join(self.evicted),
            "X-Unloaded": ",".join(self.unloaded),
        }


@dataclass(frozen=True)
class Outcome:
    """A decision and the tiers' bookkeeping once it is carried out."""

    decision: Decision
    cache: CachePolicy
    resident: CachePolicy


def decide(
    cache: CachePolicy,
    resident: CachePolicy,
    model: str,
    *,
    size: int = 0,
    footprint: int = 0,
    stale: bool = False,
) -> Outcome:
    """Decide how to serve ``model`` (a file of ``size`` bytes that needs ``footprint``
    bytes of memory once loaded). ``stale``: the worker's copy is another version,
    decided anew like a missing model, with the model itself among the evicted.

    The disk tier is swept first, then the memory tier; a file evicted is not
    also listed as unloaded. A model the disk tier refuses, or for which the
    memory tier cannot make room (everything there is pinned), is REJECTED
    with ``reason`` and nothing changes.
    """
    original = (cache, resident)
    cache, resident = cache.clone(), resident.clone()
    evicted: list[str] = []
    pinned = model in cache and cache.is_pinned(model)
    if stale:
        cache.discard(model)
        resident.discard(model)
        evicted.append(model)
    expired = list(cache.expire())
    evicted += expired
    for name in evicted:
        resident.discard(name)
    if model in resident:
        # In use again: its own memory time is not up (a keep_alive of 0 included; the
        # request's own keep_alive applies once it ends). Not a use: that is counted below.
        resident.refresh(model)
        resident.set_ttl(model, None)
    unloaded = resident.expire()
    expired += unloaded
    if model in resident:
        cache.touch(model)
        resident.touch(model)
        action = Action.ALREADY_LOADED
    else:
        try:
            if model in cache:
                cache.touch(model)
                action = Action.LOAD_FROM_LOCAL_STORE
            else:
                victims = cache.admit(model, size)
                evicted += victims
                for name in victims:
                    resident.discard(name)
                action = Action.LOAD_FROM_STORE
            unloaded += resident.admit(model, footprint)
        except CacheFull as err:
            return Outcome(Decision(model, Action.REJECTED, reason=str(err)), *original)
    unloaded = [name for name in unloaded if name not in evicted]
    if pinned and stale:  # a new version of a pinned model stays pinned
        cache.pin(model)
        resident.pin(model)
    return Outcome(
        Decision(model, action, tuple(evicted), tuple(unloaded), expired=tuple(expired)),
        cache,
        resident,
    )


def reconcile(
    cache: CachePolicy,
    resident: CachePolicy,
    worker_cached: dict[str, int],
    worker_resident: dict[str, int],
) -> tuple[list[str], list[str]]:
    """Make both tiers agree with what the worker reports; pure apart from the policies.

    ``worker_cached`` maps each file on the worker to its size and
    ``worker_resident`` each loaded model (least recently used first) to its
    estimated memory. Members the worker no longer holds are dropped. Models
    the worker holds but the tiers do not know are admitted (resident ones
    last, so they are the most recently used); whatever the tiers evict or
    refuse while admitting them is returned: (files to delete, models to
    unload). A loaded model whose file is not cached is unloaded.
    """
    for member in cache.members():
        if member not in worker_cached:
            cache.discard(member)
    for member in resident.members():
        if member not in worker_resident:
            resident.discard(member)
    unknown = [name for name in worker_cached if name not in cache and name not in worker_resident]
    unknown += [name for name in worker_resident if name in worker_cached and name not in cache]
    to_delete: list[str] = []
    for name in unknown:
        if cache.can_admit(name, worker_cached[name]):
            to_delete += cache.admit(name, worker_cached[name])
        else:
            to_delete.append(name)
    for name, footprint in worker_resident.items():
        if name not in cache:
            resident.discard(name)
        elif name not in resident and resident.can_admit(name, footprint):
            resident.admit(name, footprint)
    for name in to_delete:
        resident.discard(name)
    # Whatever the worker holds in memory that the tier did not keep is unloaded.
    to_unload = [name for name in worker_resident if name not in resident and name not in to_delete]
    return to_delete, to_unload
