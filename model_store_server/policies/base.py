"""The bookkeeping every cache policy shares: members, sizes, pins, time-to-live, bounds.

``RecencyPolicy`` owns the members (least recently used first, with their
last-use time, size, pin and time-to-live), the admission and victim logic
under count and byte budgets, and one hook, ``_eviction_order``, through
which a policy orders its victims. ``CachePolicy`` is the interface the
store, the simulator and the replay tool use; ``registry.py`` registers
the concrete policies. Pure: no I/O, no logging, an injected clock.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from enum import StrEnum
from typing import Protocol, runtime_checkable

Clock = Callable[[], float]


class Tier(StrEnum):
    CACHE = "cache"  # files on the worker's disk
    RESIDENT = "resident"  # models loaded in the worker's memory


class CacheFull(Exception):
    """Raised by ``admit`` when the policy refuses a new member (nothing changed)."""


@runtime_checkable
class CachePolicy(Protocol):
    """What the store needs from a policy. Not thread-safe: callers hold a lock."""

    name: str
    capacity: int | None
    max_bytes: int | None
    ttl: float | None

    def __contains__(self, model: str) -> bool: ...

    def __len__(self) -> int: ...

    def touch(self, model: str) -> None:
        """Record a use of a member (moves it to most recently used)."""

    def refresh(self, model: str) -> None:
        """Restart a member's idle time without counting a new use (a generation
        running or ending on it); for recency policies the same as ``touch``."""

    def fits(self, size: int) -> bool:
        """Whether a member of ``size`` bytes fits the byte budget on its own."""

    def can_admit(self, model: str, size: int = 0) -> bool:
        """Whether ``admit(model, size)`` would succeed now. Does not change anything."""

    def admit(self, model: str, size: int = 0) -> list[str]:
        """Add ``model`` as most recently used; return the members removed to make room
        (expired ones first). Raises CacheFull, changing nothing, if refused."""

    def expire(self) -> list[str]:
        """Remove and return members idle for at least their TTL (oldest first)."""

    def expired(self) -> list[str]:
        """What ``expire()`` would remove now, without removing it."""

    def is_expired(self, model: str) -> bool:
        """Whether ``model`` is a member the next ``expire()`` would remove."""

    def discard(self, model: str) -> bool:
        """Remove ``model`` if present, without any policy decision; True if it was."""

    def members(self) -> list[str]:
        """Members in eviction order: the next victim first."""

    def recency(self) -> list[str]:
        """Members least recently used first (equal to ``members`` for recency policies)."""

    def explain(self) -> list[dict]:
        """For each member in eviction order: its ``priority`` (lower goes sooner) and the
        ``reason`` it would or would not be the next victim."""

    def idle_seconds(self, model: str) -> float:
        """Seconds since ``model`` was last used."""

    def size_of(self, model: str) -> int:
        """The size ``model`` was admitted with."""

    def resize(self, model: str, size: int) -> None:
        """Correct a member's size (a better measure arrived); evicts nothing."""

    def pin(self, model: str) -> None:
        """Never choose ``model`` as a victim nor expire it (it must be a member)."""

    def unpin(self, model: str) -> None:
        """Undo ``pin`` (no error if not pinned)."""

    def set_ttl(self, model: str, seconds: float | None) -> None:
        """Override ``model``'s idle time-to-live (``math.inf``: never; None: the policy's)."""

    def clone(self) -> CachePolicy:
        """An independent copy, to try a decision without changing this one."""


class RecencyPolicy:
    """Base bookkeeping shared by every policy: members ordered by last use.

    Eviction by capacity and bytes (least recently used first) and by idle
    time live here, each active only when its bound is set; ``refuses``
    makes a full policy refuse new members instead of evicting.
    """

    name = "base"
    # Which of the configured bounds this policy applies to the disk tier
    # (the resident tier always applies capacity, see ``create_policy``).
    uses_capacity = True
    uses_ttl = True
    refuses_when_full = False

    def __init__(
        self,
        *,
        capacity: int | None = None,
        ttl: float | None = None,
        max_bytes: int | None = None,
        clock: Clock = time.monotonic,
        refuses: bool | None = None,
    ):
        if capacity is not None and capacity < 1:
            raise ValueError("capacity must be at least 1")
        if ttl is not None and ttl <= 0:
            raise ValueError("ttl must be positive")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.capacity = capacity
        self.ttl = ttl
        self.max_bytes = max_bytes
        self.refuses = self.refuses_when_full if refuses is None else refuses
        self._clock = clock
        self._last_used: OrderedDict[str, float] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._ttls: dict[str, float] = {}
        self._pinned: set[str] = set()

    def __contains__(self, model: str) -> bool:
        return model in self._last_used

    def __len__(self) -> int:
        return len(self._last_used)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(capacity={self.capacity}, max_bytes={self.max_bytes}, "
            f"ttl={self.ttl}, members={self.members()})"
        )

    def clone(self) -> RecencyPolicy:
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__)
        copy._last_used = OrderedDict(self._last_used)
        copy._sizes = dict(self._sizes)
        copy._ttls = dict(self._ttls)
        copy._pinned = set(self._pinned)
        return copy

    # -- bookkeeping ---------------------------------------------------------------

    @property
    def used_bytes(self) -> int:
        return sum(self._sizes.values())

    def size_of(self, model: str) -> int:
        return self._sizes[model]

    def resize(self, model: str, size: int) -> None:
        """Correct a member's size (a better measure arrived); evicts nothing."""
        if model not in self._last_used:
            raise KeyError(model)
        self._sizes[model] = size

    def touch(self, model: str) -> None:
        if model not in self._last_used:
            raise KeyError(model)
        self._last_used[model] = self._clock()
        self._last_used.move_to_end(model)

    def refresh(self, model: str) -> None:
        RecencyPolicy.touch(self, model)

    def discard(self, model: str) -> bool:
        self._sizes.pop(model, None)
        self._ttls.pop(model, None)
        self._pinned.discard(model)
        return self._last_used.pop(model, None) is not None

    def members(self) -> list[str]:
        return list(self._eviction_order())

    def recency(self) -> list[str]:
        return list(self._last_used)

    def _eviction_order(self) -> list[str]:
        """Members in the order the policy would choose them as victims (the hook each
        policy overrides; pinned and expired members are skipped by the caller)."""
        return list(self._last_used)

    def _evicting(self, model: str) -> None:
        """``model`` is about to be evicted to make room (not expired, not discarded)."""

    def priority(self, model: str) -> float:
        """``model``'s rank key in the eviction order (lower goes sooner)."""
        return -round(self.idle_seconds(model), 3)

    def _victim_reason(self, model: str) -> str:
        return f"least recently used (idle {self.idle_seconds(model):.1f}s)"

    def explain(self) -> list[dict]:
        expired = set(self.expired())
        rows, next_victim = [], None
        for model in self._eviction_order():
            if model in self._pinned:
                reason = "pinned: never a victim"
            elif model in expired:
                reason = "idle past its time-to-live: removed at the next sweep"
            elif self.refuses:
                reason = f"{self.name} never evicts to make room; new models are refused when full"
            elif self.capacity is None and self.max_bytes is None:
                reason = "no count or byte bound: leaves only when idle past its time-to-live"
            elif next_victim is None:
                next_victim = model
                reason = f"next victim, lowest in order: {self._victim_reason(model)}"
            else:
                reason = f"after {next_victim}: {self._victim_reason(model)}"
            rows.append(
                {
                    "name": model,
                    "priority": round(self.priority(model), 6),
                    "idle_seconds": round(self.idle_seconds(model), 3),
                    "reason": reason,
                }
            )
        return rows

    def idle_seconds(self, model: str) -> float:
        return self._clock() - self._last_used[model]

    def pin(self, model: str) -> None:
        if model not in self._last_used:
            raise KeyError(model)
        self._pinned.add(model)

    def unpin(self, model: str) -> None:
        self._pinned.discard(model)

    def is_pinned(self, model: str) -> bool:
        return model in self._pinned

    def pinned(self) -> list[str]:
        return [m for m in self._last_used if m in self._pinned]

    def set_ttl(self, model: str, seconds: float | None) -> None:
        if model not in self._last_used:
            raise KeyError(model)
        if seconds is None:
            self._ttls.pop(model, None)
        else:
            self._ttls[model] = seconds

    def ttl_of(self, model: str) -> float | None:
        """``model``'s time-to-live: its override, else the policy's (None: no time bound)."""
        return self._ttls.get(model, self.ttl)

    # -- time --------------------------------------------------------------------

    def is_expired(self, model: str) -> bool:
        if model not in self._last_used or model in self._pinned:
            return False
        ttl = self.ttl_of(model)
        if ttl is None or math.isinf(ttl):
            return False
        return self._clock() - self._last_used[model] >= ttl

    def expired(self) -> list[str]:
        if self.ttl is None and not self._ttls:  # no time bound at all: nothing to scan
            return []
        return [m for m in self._last_used if self.is_expired(m)]

    def expire(self) -> list[str]:
        expired = self.expired()
        for model in expired:
            self.discard(model)
        return expired

    def next_expiry(self) -> float | None:
        """Seconds until the next member expires (0 if one already has); None if none will."""
        if self.ttl is None and not self._ttls:
            return None
        now = self._clock()
        waits = []
        for model, last in self._last_used.items():
            ttl = self.ttl_of(model)
            if model in self._pinned or ttl is None or math.isinf(ttl):
                continue
            waits.append(max(0.0, last + ttl - now))
        return min(waits, default=None)

    # -- admission -----------------------------------------------------------------

    def fits(self, size: int) -> bool:
        return self.max_bytes is None or size <= self.max_bytes

    def _full(self, count: int, used: int, size: int) -> bool:
        if self.capacity is not None and count >= self.capacity:
            return True
        return self.max_bytes is not None and used + size > self.max_bytes

    def _room(self, size: int) -> list[str] | None:
        """The members admitting ``size`` bytes would evict (after the expired ones),
        least recently used first; None if no room can be made. Pure."""
        expired = set(self.expired())
        count = len(self._last_used) - len(expired)
        used = self.used_bytes - sum(self._sizes[m] for m in expired)
        if not self._full(count, used, size):
            return []
        if self.refuses:
            return None
        victims = []
        for model in self._eviction_order():
            if model in expired or model in self._pinned:
                continue
            victims.append(model)
            count -= 1
            used -= self._sizes[model]
            if not self._full(count, used, size):
                return victims
        return None

    def can_admit(self, model: str, size: int = 0) -> bool:
        if model in self._last_used:
            return True
        return self.fits(size) and self._room(size) is not None

    def admit(self, model: str, size: int = 0) -> list[str]:
        if model in self._last_used:
            self.touch(model)
            return []
        if not self.fits(size):
            raise CacheFull(
                f"{self.name}: {model} ({size} bytes) is larger than the budget "
                f"of {self.max_bytes} bytes"
            )
        room = self._room(size)
        if room is None:
            raise CacheFull(self._full_message(model))
        victims = self.expire()
        for victim in room:
            self._evicting(victim)
            self.discard(victim)
        victims += room
        self._last_used[model] = self._clock()
        self._sizes[model] = size
        return victims

    def _full_message(self, model: str) -> str:
        bounds = []
        if self.capacity is not None:
            bounds.append(f"{len(self)}/{self.capacity} models")
        if self.max_bytes is not None:
            bounds.append(f"{self.used_bytes}/{self.max_bytes} bytes")
        pinned = f"; pinned: {','.join(self.pinned())}" if self._pinned else ""
        return f"{self.name}: cache is full ({', '.join(bounds)}){pinned}"
