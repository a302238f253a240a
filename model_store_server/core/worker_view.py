"""What the store believes one worker holds, and who may use it right now.

``WorkerView`` owns the worker's two tiers (files on its disk; models in its
memory), the version of each file, each resident model's keep_alive and the
pins, plus a ``Gate`` (the slot state machine) and a ``Scheduler`` (the
per-model queues). All of it changes under one lock and performs no I/O:
the executor carries decisions out and the orchestrator reports back through
the grants (``Hit``, ``Swap``, ``Exclusive``). One view per worker; views
share nothing, so several can live side by side.

Rules (thread-safe, every wait bounded by one deadline):
- a hit on a resident model is served at once, even while another model is
  pushed or loaded, unless the scheduler holds it back (see ``scheduler``);
- one swap at a time; requests that need one queue per model, and the
  scheduler's next group is served together once its model is in;
- a model is never unloaded or evicted while a generation runs on it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from model_store_server.core.gate import Busy, Gate, WorkerDown
from model_store_server.core.grants import Exclusive, Hit, Swap, Ticket
from model_store_server.core.scheduler import Scheduler, Waiter
from model_store_server.core.view_control import ViewControl
from model_store_server.core.view_report import Member, Snapshot, ViewReport
from model_store_server.decision import LOADS, Action, Decision, Outcome, decide
from model_store_server.policies import CachePolicy

__all__ = ["Busy", "Member", "Rejected", "Snapshot", "TooLarge", "WorkerDown", "WorkerView"]


class TooLarge(Exception):
    """A model is larger than a tier's whole budget; nothing was changed."""


class Rejected(Exception):
    """The policy refused the model (``ticket`` says why); nothing was changed."""

    def __init__(self, ticket: Ticket):
        super().__init__(ticket.decision.reason)
        self.ticket = ticket


class WorkerView(ViewReport, ViewControl):
    """One worker's tiers, versions, keep_alive and pins, its gate and queues. Thread-safe."""

    def __init__(
        self,
        cache: CachePolicy,
        resident: CachePolicy,
        *,
        max_wait: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.cache = cache
        self.resident = resident
        self.gate = Gate()
        self._cond = self.gate.cond
        self.scheduler = Scheduler(max_wait)
        self._now = clock  # the scheduler's clock (waits themselves use time.monotonic)
        self._synced = False
        self._suspect: set[str] = set()  # models whose stream failed: re-read before a hit
        # The digest of each cached model's copy on the worker (None: unknown, never trusted).
        self._versions: dict[str, str | None] = {}
        self._keep: dict[str, float | None] = {}  # the last keep_alive asked per model
        self.on_idle: Callable[[], None] = lambda: None  # called when a generation ends
        # Seconds a model stays idle where a tier has a time-to-live (PREWARM's keep-alive)
        self.idle_keep: Callable[[str], float | None] = lambda model: None
        self._down = False  # marked down by the fleet: waiting requests leave
        self._background: Swap | None = None  # a prewarm or keep-alive unload carried out

    # -- deciding ------------------------------------------------------------------------

    def _stale(self, model: str, version: str | None) -> bool:
        """Whether the worker's copy of ``model`` is another version than ``version``."""
        return version is not None and model in self.cache and self._versions.get(model) != version

    def _touch_active(self) -> None:
        """A model that is generating is in use, not idle: no TTL expires it."""
        for name in self.gate.active():
            for tier in (self.cache, self.resident):
                if name in tier:
                    tier.refresh(name)

    def _hit(self, model: str, version: str | None) -> bool:
        """Whether ``model`` can be served now without the slot.

        Not while the gate holds it back, when its copy is stale, its stream
        failed, or its file's time is up. Other models whose time is up are
        swept by this request's decision if no swap runs (the seed's lazy
        sweep), else left to that swap or the idle sweep.
        """
        if (
            model not in self.resident
            or model in self._suspect
            or not self.gate.admits_hit(model)
            or self._stale(model, version)
            or self.cache.is_expired(model)
        ):
            return False
        return self.gate.swapping or (not self.cache.expired() and not self.resident.expired())

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

    def admit(
        self,
        model: str,
        deadline: float,
        version: str | None = None,
        *,
        size: int = 0,
        footprint: int = 0,
        keep_alive: float | None = None,
        pin: bool = False,
    ) -> Hit | Swap:
        """Serve ``model``: a ``Hit`` (generate now) or a ``Swap`` (carry it out, then commit).

        Waits for the request's turn until ``deadline`` (``time.monotonic``).
        ``version`` is the digest of the store's file now (a worker copy of
        another version is stale and replaced); ``size`` and ``footprint``
        are the file's bytes and its estimated memory. ``keep_alive`` applies
        once the generation ends; ``pin`` pins the model once resident.
        Raises TooLarge, PinConflict, Rejected or Busy, having changed nothing.
        """
        started = time.perf_counter()
        with self._cond:
            self._check_up()
            self.check_fits(model, size, footprint)
            if pin:
                self._check_pin(model, size, footprint)
            self._touch_active()
            if self._hit(model, version) and self.scheduler.may_hit(model, self._now()):
                return self._grant_hit(self._hit_ticket(model, version, started, keep_alive, pin))
            waiter = self.scheduler.arrive(
                model, self._now(), version=version, keep_alive=keep_alive, pin=pin, started=started
            )
            background = self._background
            if background is not None and background.decision.model != model:
                background.stopping.set()  # this request needs the slot: the prewarm stops
            self._cond.notify_all()
            try:
                return self._wait_turn(waiter, deadline, size, footprint)
            except BaseException:
                if isinstance(waiter.granted, Hit):
                    waiter.granted.release()  # handed over while this thread failed
                raise
            finally:
                self.scheduler.leave(waiter)
                self._cond.notify_all()

    def _hit_ticket(self, model, version, started, keep_alive, pin) -> Ticket:
        decision_ms = (time.perf_counter() - started) * 1000
        decision = Decision(model, Action.ALREADY_LOADED)
        return Ticket(decision, False, decision_ms, version, keep_alive, pin)

    def _wait_turn(self, waiter: Waiter, deadline: float, size: int, footprint: int) -> Hit | Swap:
        model, version = waiter.model, waiter.version
        what = "another model swap to finish"
        while True:
            if waiter.granted is not None:
                return waiter.granted
            self._check_up()
            now = self._now()
            self._touch_active()
            if self._hit(model, version) and self.scheduler.may_hit(model, now, waiter):
                return self._grant_hit(
                    self._hit_ticket(model, version, waiter.started, waiter.keep_alive, waiter.pin)
                )
            if self.gate.slot_free and self.scheduler.in_group(waiter, now):
                grant = self._try_swap(waiter, deadline, size, footprint)
                if grant is not None:
                    return grant
                what = "running generations to finish"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Busy(f"timed out waiting for {what}")
            self._cond.wait(min(remaining, self.scheduler.next_change(now) + 0.001))

    def _try_swap(self, waiter: Waiter, deadline: float, size: int, footprint: int):
        """Take the slot and decide; None (slot given back) while the swap is patient."""
        self.gate.take_swap()
        try:
            outcome = self._decide_when_drained(waiter, size, footprint, deadline)
        except BaseException:
            self.gate.release()
            raise
        if outcome is None:  # patient: nothing changed, nobody to wake
            self.gate.release(changed=False)
            return None
        decision = outcome.decision
        ticket = Ticket(
            decision,
            decision.changes_worker and decision.action is not Action.REJECTED,
            (time.perf_counter() - waiter.started) * 1000,
            waiter.version,
            waiter.keep_alive,
            waiter.pin,
        )
        self._adopt(outcome)
        if decision.action is Action.REJECTED:
            self.gate.release()
            raise Rejected(ticket)
        if not ticket.owns_swap:
            self.gate.release()
            return self._grant_hit(ticket)
        self.gate.change(decision.touches)
        if decision.action in LOADS:
            self.scheduler.claim(decision.model)  # its group holds while the load runs
        return Swap(ticket, self._commit, self._abort)

    def _decide_when_drained(
        self, waiter: Waiter, size: int, footprint: int, deadline: float
    ) -> Outcome | None:
        """Decide (the caller holds the slot). If the decision takes away models that are
        generating: None while the scheduler says to be patient; else stop new hits on
        them, wait for one to end and decide again. Busy at ``deadline``."""
        model = waiter.model
        while True:
            self._touch_active()
            outcome = decide(
                self.cache,
                self.resident,
                model,
                size=size,
                footprint=footprint,
                stale=self._stale(model, waiter.version),
            )
            taken = outcome.decision.takes_away
            busy = frozenset(name for name in taken if self.gate.generating(name))
            if outcome.decision.action is Action.REJECTED or not busy:
                return outcome
            if self.scheduler.patient(model, self._now()):
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Busy(f"timed out waiting for running generations on {','.join(sorted(busy))}")
            self.gate.drain(busy)
            try:
                self._cond.wait(remaining)
            finally:
                self.gate.drain(frozenset())

    def _adopt(self, outcome: Outcome) -> None:
        self.cache, self.resident = outcome.cache, outcome.resident
        for name in outcome.decision.evicted:
            self._versions.pop(name, None)
        for name in outcome.decision.takes_away:
            self._forget_keep(name)

    # -- grants ------------------------------------------------------------------------------

    def _grant_hit(self, ticket: Ticket) -> Hit:
        """Start a generation (caller holds the lock)."""
        model = ticket.decision.model
        self.cache.touch(model)
        self.resident.touch(model)
        self.gate.enter(model)
        if ticket.pin:
            self.cache.pin(model)
            self.resident.pin(model)
        # Until the generation ends the model follows the policy's own time bound.
        self._set_keep(model, ticket.keep_alive if ticket.keep_alive != 0 else None)
        return Hit(ticket, self._hit_ended)

    def _hit_ended(self, hit: Hit) -> None:
        """A generation ended: the model's idle time and its keep_alive start now."""
        with self._cond:
            model = hit.model
            idle = self.gate.leave(model)
            for tier in (self.cache, self.resident):
                if model in tier:
                    tier.refresh(model)
            if idle and model in self.resident:
                self._set_keep(model, hit.keep_alive)
                if hit.keep_alive is None:
                    self._keep_longer(model, self.idle_keep(model))
        self.on_idle()

    def _commit(self, swap: Swap, hit: bool) -> Hit | None:
        decision, ticket = swap.decision, swap.ticket
        with self._cond:
            if self._background is swap:
                self._background = None
            if decision.action is Action.LOAD_FROM_STORE:
                self._versions[decision.model] = ticket.version
            granted = None
            if decision.action in (Action.ALREADY_LOADED, *LOADS) and hit:
                granted = self._grant_hit(ticket)
            elif ticket.pin and decision.model in self.resident:
                self.cache.pin(decision.model)
                self.resident.pin(decision.model)
            self.gate.release()
            if decision.action in LOADS:
                group = self._serve_group(decision.model)
                if granted is not None:
                    group.append(granted)
                for member in group:
                    member.together = len(group)
            self.scheduler.unclaim(decision.model)
            return granted

    def _serve_group(self, model: str) -> list[Hit]:
        """Hand a ``Hit`` to every request of ``model``'s group: served before any swap.
        Returns the hits handed out."""
        now = self._now()
        served = []
        for waiter in self.scheduler.group(model, now):
            if self._hit(model, waiter.version):
                waiter.granted = self._grant_hit(
                    self._hit_ticket(
                        model, waiter.version, waiter.started, waiter.keep_alive, waiter.pin
                    )
                )
                served.append(waiter.granted)
                self.scheduler.leave(waiter)
        return served

    def _abort(self, swap: Swap, synced: bool) -> None:
        with self._cond:
            if self._background is swap:
                self._background = None
            self._synced = self._synced and synced
            if not synced:
                self._forget(swap.decision.touches)
            self.scheduler.unclaim(swap.decision.model)
            self.gate.release()

    def _forget(self, names: Iterable[str]) -> None:
        """Count ``names`` as held nowhere: the store claims nothing it has not seen."""
        for name in names:
            self.cache.discard(name)
            self.resident.discard(name)
            self._versions.pop(name, None)
            self._keep.pop(name, None)

    def exclusive(self, deadline: float) -> Exclusive:
        """The worker with nothing generating (for syncs and resets); Busy at ``deadline``."""
        with self._cond:
            self.gate.take_exclusive(deadline)
        return Exclusive(self._end_exclusive)

    def _end_exclusive(self, synced: bool | None) -> None:
        with self._cond:
            if synced is not None:
                self._synced = synced
                if synced:
                    self._suspect.clear()
            self.gate.release()
