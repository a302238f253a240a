"""What the store believes its worker holds, and who may change it right now.

``WorkerState`` owns the two tiers' policies (files in the worker's disk
cache; models resident in its memory), how many generations run on each
model, and the one swap in progress. It is the only place these change,
always under one condition variable, and it performs no I/O: callers carry
decisions out on the worker and report back.

Rules it enforces (thread-safe, every wait bounded by one deadline):
- a hit on a resident model is served at once, even while another model is
  being pushed or loaded (only the models a swap changes wait for it);
- one swap at a time; other misses wait for it, then decide on the new
  state (so two requests for one missing model cause one transfer);
- a model is never unloaded or evicted while a generation runs on it: the
  swap first stops new entrants on exactly those models, then waits for
  their running generations, never for other models'.

What must be given back is returned as one object (``leases.py``): a
generation ``Lease`` (released exactly once) and a ``SwapSlot`` (committed or
ended exactly once).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from model_store_server.cache_policy import CachePolicy
from model_store_server.decision import LOADS, Action, Decision, Outcome, decide, reconcile
from model_store_server.leases import Lease, SwapSlot, Ticket
from model_store_server.state_control import ExplicitControl


class Busy(Exception):
    """The wait for a swap or for running generations exceeded the deadline."""


class TooLarge(Exception):
    """A model is larger than a tier's whole budget; nothing was changed."""


@dataclass(frozen=True)
class Member:
    name: str
    idle_seconds: float
    size_bytes: int
    pinned: bool


@dataclass(frozen=True)
class Snapshot:
    cached: tuple[Member, ...]
    resident: tuple[Member, ...]  # most recently used last
    generating: int
    swapping: bool
    synced: bool
    generating_by_model: dict[str, int] = field(default_factory=dict)

    @property
    def loaded(self) -> str | None:
        """The most recently used resident model (the seed's single ``loaded``)."""
        return self.resident[-1].name if self.resident else None


class WorkerState(ExplicitControl):
    """The store's view of its worker; see the module docstring. Thread-safe."""

    def __init__(self, cache: CachePolicy, resident: CachePolicy):
        self.cache = cache
        self.resident = resident
        self._cond = threading.Condition()
        self._active: Counter[str] = Counter()
        self._swapping = False
        self._changing: frozenset[str] = frozenset()  # what the swap in progress changes
        self._draining: set[str] = set()  # models a pending swap waits to take away
        self._synced = False
        self._exclusive = False  # a sync or reset holds the worker: no new generations
        # The digest of each cached model's copy on the worker (None: unknown, never trusted).
        self._versions: dict[str, str | None] = {}
        self._keep: dict[str, float | None] = {}  # the last keep_alive asked per model
        self.on_idle: Callable[[], None] = lambda: None  # called when a lease ends

    # -- waiting -----------------------------------------------------------------

    def _wait(self, ready: Callable[[], bool], deadline: float, what: str) -> None:
        while not ready():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Busy(f"timed out waiting for {what}")
            self._cond.wait(remaining)

    # -- requests ----------------------------------------------------------------

    def _stale(self, model: str, version: str | None) -> bool:
        """Whether the worker's copy of ``model`` is another version than ``version``."""
        return version is not None and model in self.cache and self._versions.get(model) != version

    def _touch_active(self) -> None:
        """A model that is generating is in use, not idle: no TTL expires it."""
        for name, count in self._active.items():
            if count:
                for tier in (self.cache, self.resident):
                    if name in tier:
                        tier.refresh(name)

    def _nothing_due(self) -> bool:
        return not self.cache.expired() and not self.resident.expired()

    def _hit(self, model: str, version: str | None) -> bool:
        """Whether ``model`` can be served now without the swap slot.

        Not while a sync or reset holds the worker, while a swap changes or waits
        to take the model away, or when its copy is stale or its file's time is up
        (decided anew, as the seed does). Other models whose time is up are
        swept by this request's decision if no swap runs (the seed's lazy
        sweep), else left to that swap or the idle sweep: a hit never waits
        for another model's swap.
        """
        if (
            self._exclusive
            or model not in self.resident
            or model in self._changing
            or model in self._draining
            or self._stale(model, version)
            or self.cache.is_expired(model)
        ):
            return False
        return self._swapping or self._nothing_due()

    def check_fits(self, model: str, size: int, footprint: int) -> None:
        """Raise TooLarge if ``model`` exceeds a tier's whole budget on its own."""
        for tier, need, what in (
            (self.cache, size, "MAX_CACHE_BYTES"),
            (self.resident, footprint, "MAX_LOADED_BYTES"),
        ):
            if not tier.fits(need):
                raise TooLarge(
                    f"{model} needs {need} bytes, more than {what}={tier.max_bytes} on its own"
                )

    def begin(
        self,
        model: str,
        timeout: float,
        version: str | None = None,
        *,
        size: int = 0,
        footprint: int = 0,
        keep_alive: float | None = None,
        pin: bool = False,
    ) -> Ticket:
        """Decide how to serve ``model``, waiting (at most ``timeout`` s) for its turn.

        ``version`` is the digest of the store's file now: a worker copy of
        another version is stale, and is evicted and replaced by a push
        (``X-Evicted`` names the model itself); None skips the check.
        ``size`` and ``footprint`` are the file's bytes and its estimated
        memory once loaded. ``keep_alive`` applies from the end of this
        request's generation; ``pin`` pins the model in both tiers once it
        is resident. Raises TooLarge or PinConflict (nothing changed), or
        Busy, having changed nothing, if the wait exceeds ``timeout``.
        """
        deadline = time.monotonic() + timeout
        started = time.perf_counter()
        with self._cond:
            self.check_fits(model, size, footprint)
            if pin:
                self._check_pin(model, size, footprint)
            self._touch_active()
            if not self._take_slot_unless_hit(model, version, deadline):
                return self._serve_hit(model, version, started, keep_alive, pin)
            try:
                outcome = self._decide_when_drained(model, version, size, footprint, deadline)
            except BaseException:
                self._swapping = False
                self._cond.notify_all()
                raise
            decision = outcome.decision
            decision_ms = (time.perf_counter() - started) * 1000
            self._adopt(outcome)
            if decision.action is Action.REJECTED or not decision.changes_worker:
                self._swapping = False
                lease = None
                if decision.action is not Action.REJECTED:
                    lease = self._grant(model, keep_alive, pin)
                self._cond.notify_all()
                return Ticket(
                    decision, False, decision_ms, version, lease=lease, keep_alive=keep_alive
                )
            self._changing = decision.touches
            return Ticket(decision, True, decision_ms, version, keep_alive=keep_alive, pin=pin)

    def _take_slot_unless_hit(self, model: str, version: str | None, deadline: float) -> bool:
        """Take the swap slot, waiting for the one in progress; False (nothing taken)
        as soon as ``model`` can be served as a hit. Raises Busy at ``deadline``."""
        while not self._hit(model, version):
            self._wait(
                lambda: not self._swapping or self._hit(model, version),
                deadline,
                "another model swap to finish",
            )
            if not self._hit(model, version):
                self._swapping = True
                return True
        return False

    def _decide_when_drained(
        self, model: str, version: str | None, size: int, footprint: int, deadline: float
    ) -> Outcome:
        """Decide (the caller holds the slot); if the decision takes away models that are
        generating, stop new generations on them, wait for a running one to end and
        decide again (an idle model may now be the victim). Raises Busy at ``deadline``,
        having changed nothing."""
        while True:
            self._touch_active()
            outcome = decide(
                self.cache,
                self.resident,
                model,
                size=size,
                footprint=footprint,
                stale=self._stale(model, version),
            )
            busy = [name for name in outcome.decision.takes_away if self._active[name]]
            if outcome.decision.action is Action.REJECTED or not busy:
                return outcome
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Busy(f"timed out waiting for running generations on {','.join(busy)}")
            self._draining.update(busy)
            try:
                self._cond.wait(remaining)
            finally:
                self._draining.difference_update(busy)

    def _serve_hit(
        self, model: str, version: str | None, started: float, keep_alive, pin: bool
    ) -> Ticket:
        self.cache.touch(model)
        self.resident.touch(model)
        lease = self._grant(model, keep_alive, pin)
        decision = Decision(model, Action.ALREADY_LOADED)
        decision_ms = (time.perf_counter() - started) * 1000
        return Ticket(decision, False, decision_ms, version, lease=lease, keep_alive=keep_alive)

    def _adopt(self, outcome: Outcome) -> None:
        self.cache, self.resident = outcome.cache, outcome.resident
        for name in outcome.decision.evicted:
            self._versions.pop(name, None)
        for name in outcome.decision.takes_away:
            self._forget_keep(name)

    def _grant(self, model: str, keep_alive: float | None, pin: bool) -> Lease:
        """Start a generation on ``model`` (caller holds the lock)."""
        self._active[model] += 1
        if pin:
            self.cache.pin(model)
            self.resident.pin(model)
        # Until the generation ends the model follows the policy's own time bound.
        self._set_keep(model, keep_alive if keep_alive != 0 else None)
        return Lease(self, model, keep_alive)

    def swap(self, ticket: Ticket) -> SwapSlot:
        """The slot ``begin`` granted with ``ticket``, for ``with state.swap(ticket) as slot:``."""
        if not ticket.owns_swap:
            raise ValueError("this ticket holds no swap slot")
        return SwapSlot(self, ticket)

    def _commit(self, ticket: Ticket, *, lease: bool) -> Lease | None:
        decision = ticket.decision
        with self._cond:
            if decision.action is Action.LOAD_FROM_STORE:
                self._versions[decision.model] = ticket.version
            granted = None
            if decision.action in (Action.ALREADY_LOADED, *LOADS) and lease:
                granted = self._grant(decision.model, ticket.keep_alive, ticket.pin)
            elif ticket.pin and decision.model in self.resident:
                self.cache.pin(decision.model)
                self.resident.pin(decision.model)
            self._swapping = False
            self._changing = frozenset()
            self._cond.notify_all()
            return granted

    def _end(self, *, synced: bool, ticket: Ticket | None) -> None:
        with self._cond:
            self._synced = synced
            if not synced and ticket is not None:
                for name in ticket.decision.touches:
                    self.cache.discard(name)
                    self.resident.discard(name)
                    self._versions.pop(name, None)
                    self._keep.pop(name, None)
            self._swapping = self._exclusive = False
            self._changing = frozenset()
            self._cond.notify_all()

    def _release(self, lease: Lease) -> None:
        """A generation ended (normally, by error or disconnect).

        The model's idle time starts now, not when the generation started,
        and the request's ``keep_alive`` takes effect.
        """
        with self._cond:
            model = lease.model
            self._active[model] -= 1
            if self._active[model] <= 0:
                del self._active[model]
            for tier in (self.cache, self.resident):
                if model in tier:
                    tier.refresh(model)
            if model not in self._active and model in self.resident:
                self._set_keep(model, lease.keep_alive)
            self._cond.notify_all()
        self.on_idle()

    # -- synchronising with the worker's truth ------------------------------------

    @property
    def synced(self) -> bool:
        with self._cond:
            return self._synced

    def exclusive(self, timeout: float) -> SwapSlot:
        """Take the swap slot with nothing generating (for syncs and resets).

        Blocks; raises Busy, having changed nothing, after ``timeout`` seconds.
        Use the slot as a context manager and end it with ``end(synced=...)``;
        see ``SwapSlot``.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            self._wait(lambda: not self._swapping, deadline, "another model swap to finish")
            self._swapping = self._exclusive = True
            try:
                self._wait(lambda: not self._active, deadline, "running generations to finish")
            except Busy:
                self._swapping = self._exclusive = False
                self._cond.notify_all()
                raise
        return SwapSlot(self, None)

    def apply_worker_report(
        self,
        cached: dict[str, int],
        resident: dict[str, int],
        digests: dict[str, str | None] | None = None,
    ) -> tuple[list[str], list[str]]:
        """Adopt the worker's report (caller holds the swap slot).

        ``cached`` maps files to sizes, ``resident`` loaded models (least
        recently used first) to estimated bytes, ``digests`` the versions of
        the worker's files (missing: unknown). Returns (files to delete,
        models to unload) to restore the tiers' bounds.
        """
        with self._cond:
            self._versions = {name: (digests or {}).get(name) for name in cached}
            to_delete, to_unload = reconcile(self.cache, self.resident, cached, resident)
            for name in list(self._keep):
                if name not in self.resident:
                    self._forget_keep(name)
            return to_delete, to_unload

    def mark_unsynced(self) -> None:
        """Something the worker said contradicts this view; re-read it before the next decision."""
        with self._cond:
            self._synced = False

    # -- reading -----------------------------------------------------------------

    def _members(self, tier: CachePolicy, names: Iterable[str]) -> tuple[Member, ...]:
        return tuple(
            Member(
                name,
                round(tier.idle_seconds(name), 3),
                tier.size_of(name),
                tier.is_pinned(name),
            )
            for name in names
        )

    def snapshot(self) -> Snapshot:
        with self._cond:
            return Snapshot(
                cached=self._members(self.cache, self.cache.members()),
                resident=self._members(self.resident, self.resident.recency()),
                generating=sum(self._active.values()),
                swapping=self._swapping,
                synced=self._synced,
                generating_by_model=dict(self._active),
            )

    def explain(self) -> tuple[list[dict], list[dict]]:
        """Each tier's ``explain()`` (priorities and victim reasons), read consistently."""
        with self._cond:
            return self.cache.explain(), self.resident.explain()

    def loaded_size(self, model: str, estimated_bytes: int) -> None:
        """The worker's memory estimate of ``model``, just loaded, replaces the store's."""
        with self._cond:
            if model in self.resident:
                self.resident.resize(model, estimated_bytes)

    def file_size(self, model: str) -> int | None:
        """The size ``model``'s file was admitted with, or None if it is not cached."""
        with self._cond:
            return self.cache.size_of(model) if model in self.cache else None

    def keep_alive_of(self, model: str) -> float | None:
        with self._cond:
            return self._keep.get(model)
