"""Cache policies: which models the worker keeps on disk, and which to evict.

Pure bookkeeping, in the style of cachetools: ``RecencyPolicy`` owns the
members (least recently used first, with their last-use time) and each policy
only decides admission and victims. Policies never perform I/O and never log;
the store carries out what they return. Time comes from an injected clock, so
TTL behaviour is tested by advancing a fake clock.

The loaded model is a member like any other: capacity counts it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol, runtime_checkable

Clock = Callable[[], float]


class CacheFull(Exception):
    """Raised by ``admit`` when the policy refuses a new member."""


@runtime_checkable
class CachePolicy(Protocol):
    """What the store needs from a policy. Not thread-safe: callers hold a lock."""

    name: str
    capacity: int | None
    ttl: float | None

    def __contains__(self, model: str) -> bool: ...

    def __len__(self) -> int: ...

    def touch(self, model: str) -> None:
        """Record a use of a member (moves it to most recently used)."""

    def can_admit(self, model: str) -> bool:
        """Whether ``admit(model)`` would succeed now. Does not change anything."""

    def admit(self, model: str) -> list[str]:
        """Add ``model`` as most recently used; return the members removed to make room
        (expired ones first). Raises CacheFull, changing nothing, if refused."""

    def expire(self) -> list[str]:
        """Remove and return members idle for at least the TTL (oldest first)."""

    def is_expired(self, model: str) -> bool:
        """Whether ``model`` is a member the next ``expire()`` would remove."""

    def discard(self, model: str) -> bool:
        """Remove ``model`` if present, without any policy decision; True if it was."""

    def members(self) -> list[str]:
        """Members in eviction order: the next victim first."""

    def idle_seconds(self, model: str) -> float:
        """Seconds since ``model`` was last used."""


class RecencyPolicy:
    """Base bookkeeping shared by every policy: members ordered by last use.

    Subclasses set ``capacity`` and/or ``ttl`` and may refuse admission by
    overriding ``can_admit``; eviction by capacity (least recently used first)
    and by idle time both live here, each active only when its bound is set.
    """

    name = "base"

    def __init__(
        self,
        *,
        capacity: int | None = None,
        ttl: float | None = None,
        clock: Clock = time.monotonic,
    ):
        if capacity is not None and capacity < 1:
            raise ValueError("capacity must be at least 1")
        if ttl is not None and ttl <= 0:
            raise ValueError("ttl must be positive")
        self.capacity = capacity
        self.ttl = ttl
        self._clock = clock
        self._last_used: OrderedDict[str, float] = OrderedDict()

    def __contains__(self, model: str) -> bool:
        return model in self._last_used

    def __len__(self) -> int:
        return len(self._last_used)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(capacity={self.capacity}, ttl={self.ttl}, "
            f"members={self.members()})"
        )

    def touch(self, model: str) -> None:
        if model not in self._last_used:
            raise KeyError(model)
        self._last_used[model] = self._clock()
        self._last_used.move_to_end(model)

    def can_admit(self, model: str) -> bool:
        return True

    def admit(self, model: str) -> list[str]:
        if model in self._last_used:
            self.touch(model)
            return []
        if not self.can_admit(model):
            raise CacheFull(f"{self.name}: cache is full ({len(self)}/{self.capacity})")
        victims = self.expire()
        if self.capacity is not None:
            while len(self._last_used) >= self.capacity:
                victim, _ = self._last_used.popitem(last=False)
                victims.append(victim)
        self._last_used[model] = self._clock()
        return victims

    def expire(self) -> list[str]:
        if self.ttl is None:
            return []
        now = self._clock()
        expired = []
        # Members are ordered by last use, so the idle ones are at the front.
        while self._last_used:
            model, last = next(iter(self._last_used.items()))
            if now - last < self.ttl:
                break
            del self._last_used[model]
            expired.append(model)
        return expired

    def is_expired(self, model: str) -> bool:
        if self.ttl is None or model not in self._last_used:
            return False
        return self._clock() - self._last_used[model] >= self.ttl

    def discard(self, model: str) -> bool:
        return self._last_used.pop(model, None) is not None

    def members(self) -> list[str]:
        return list(self._last_used)

    def idle_seconds(self, model: str) -> float:
        return self._clock() - self._last_used[model]


class LRUPolicy(RecencyPolicy):
    """At most ``capacity`` members; admitting one more evicts the least recently used."""

    name = "lru"

    def __init__(self, *, capacity: int, ttl: float | None = None, clock: Clock = time.monotonic):
        super().__init__(capacity=capacity, clock=clock)


class NoEvictPolicy(RecencyPolicy):
    """Admits until ``capacity`` members, then refuses every new model."""

    name = "no-evict"

    def __init__(self, *, capacity: int, ttl: float | None = None, clock: Clock = time.monotonic):
        super().__init__(capacity=capacity, clock=clock)

    def can_admit(self, model: str) -> bool:
        return model in self or len(self) < self.capacity


class TTLPolicy(RecencyPolicy):
    """No capacity bound; a member idle for ``ttl`` seconds is evicted at the next sweep."""

    name = "ttl"

    def __init__(self, *, ttl: float, capacity: int | None = None, clock: Clock = time.monotonic):
        super().__init__(ttl=ttl, clock=clock)


class LRUTTLPolicy(RecencyPolicy):
    """Both bounds: at most ``capacity`` members, and none idle for ``ttl`` seconds."""

    name = "lru-ttl"

    def __init__(self, *, capacity: int, ttl: float, clock: Clock = time.monotonic):
        super().__init__(capacity=capacity, ttl=ttl, clock=clock)


POLICIES: dict[str, type[RecencyPolicy]] = {
    cls.name: cls for cls in (LRUPolicy, NoEvictPolicy, TTLPolicy, LRUTTLPolicy)
}


def create_policy(
    name: str, *, capacity: int, ttl: float, clock: Clock = time.monotonic
) -> RecencyPolicy:
    """Build the policy registered as ``name``; each uses the bounds it needs."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown cache policy {name!r} (valid: {', '.join(POLICIES)})") from None
    return cls(capacity=capacity, ttl=ttl, clock=clock)
