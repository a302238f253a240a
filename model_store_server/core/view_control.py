"""The part of ``WorkerView`` that acts on request or on time rather than per generation.

Unloading or evicting a model on request (``/models/...``), unpinning, the
idle sweep's unloads, holding one model to re-read it, and the bookkeeping
of keep_alive and pins. A mixin of ``WorkerView``: every method runs under
its lock and goes through its gate (one slot, no model taken away while it
generates, waits bounded by a deadline).
"""

from __future__ import annotations

import math
import time

from model_store_server.core.gate import WorkerDown
from model_store_server.core.grants import Swap, Ticket
from model_store_server.decision import Action, Decision


class PinConflict(Exception):
    """Pinning would hold more than a tier can keep; nothing was changed."""


class ViewControl:
    """Explicit unload/evict/unpin, the idle sweep, keep_alive and pins (see module doc)."""

    def set_down(self, down: bool) -> None:
        """Mark the worker down (requests waiting here raise WorkerDown) or up again."""
        with self._cond:
            self._down = down
            self._cond.notify_all()

    def _check_up(self) -> None:
        if self._down:
            raise WorkerDown("the worker is down")

    def _take_slot_draining(self, model: str, deadline: float) -> None:
        """Take the slot, then wait for ``model``'s generations (no new ones start)."""
        self.gate.wait(lambda: self.gate.slot_free, deadline, "another model swap to finish")
        self.gate.take_swap()
        self.gate.drain(frozenset({model}))
        try:
            self.gate.wait(
                lambda: not self.gate.generating(model),
                deadline,
                f"running generations on {model} to finish",
            )
        except BaseException:
            self.gate.release()
            raise
        self.gate.drain(frozenset())

    def take_away(self, model: str, action: Action, deadline: float) -> Swap | None:
        """Take ``model`` out of memory (UNLOAD) or off the worker (EVICT) on request.

        Waits, bounded, for the slot and for ``model``'s generations. Returns
        the ``Swap`` to carry out, or None, having changed nothing (not even a
        pin), if the worker does not hold the model there.
        """
        with self._cond:
            self._take_slot_draining(model, deadline)
            started = time.perf_counter()
            evict = action is Action.EVICT
            if model not in (self.cache if evict else self.resident):
                self.gate.release()
                return None
            self.cache.unpin(model)  # taken out on request: no longer pinned on either tier
            self.resident.discard(model)
            self._forget_keep(model)
            if evict:
                self.cache.discard(model)
                self._versions.pop(model, None)
            decision = Decision(
                model,
                action,
                evicted=(model,) if evict else (),
                unloaded=() if evict else (model,),
            )
            self.gate.change(decision.touches)
            ms = (time.perf_counter() - started) * 1000
            return Swap(Ticket(decision, True, ms), self._commit, self._abort)

    def hold(self, model: str, deadline: float) -> Swap:
        """The slot, with ``model``'s generations ended and nothing changed (to re-read the
        worker about ``model``); other models' hits go on. Commit it with ``hit=False``."""
        with self._cond:
            self._take_slot_draining(model, deadline)
            self.gate.change(frozenset({model}))
            decision = Decision(model, Action.ALREADY_LOADED)
            return Swap(Ticket(decision, True, 0.0), self._commit, self._abort)

    def sync_slot(
        self, deadline: float, model: str | None = None, version: str | None = None
    ) -> Swap | None:
        """The slot, to re-read the worker (``Executor.reread``); waits only for another
        swap to finish, never for generations: hits on resident models go on while it is
        held. Returns None, having taken nothing, once the view is synced meanwhile or, with
        ``model``, once ``model`` can be served as a hit without it (a stale view is then
        corrected by the worker's 404, which the request retries after a re-read). Busy at
        ``deadline``. End it with ``abort(synced=...)``."""
        with self._cond:
            self.gate.wait(
                lambda: (
                    self._synced
                    or self.gate.slot_free
                    or (model is not None and self._hit(model, version))
                ),
                deadline,
                "another model swap to finish",
            )
            if self._synced or not self.gate.slot_free:
                return None
            self.gate.take_swap()
            decision = Decision("", Action.ALREADY_LOADED)  # changes no model by itself
            return Swap(Ticket(decision, True, 0.0), self._commit, self._abort)

    def wait_ended(self, models: list[str], deadline: float) -> None:
        """Wait (the caller holds the slot) until no generation runs on ``models``, which
        the view no longer holds: no new ones start. Busy at ``deadline``."""
        with self._cond:
            self.gate.wait(
                lambda: not any(self.gate.generating(m) for m in models),
                deadline,
                f"running generations on {','.join(models)} to finish",
            )

    def unpin(self, model: str) -> bool:
        """Unpin ``model`` in both tiers; False if the worker does not hold it."""
        with self._cond:
            if model not in self.cache:
                return False
            self.cache.unpin(model)
            self.resident.unpin(model)
            return True

    def sweep(self) -> Swap | None:
        """Unload resident models whose time is up (none generating), if the slot is free.

        Returns the ``Swap`` (``Decision(UNLOAD)`` naming them in ``unloaded``),
        or None if there is nothing to do now. The disk tier is left to the
        next request, which reports its expired files in ``X-Evicted``.
        """
        with self._cond:
            if not self.gate.slot_free or not self._synced:
                return None
            self._touch_active()
            due = self.resident.expired()
            if not due:
                return None
            for name in due:
                self.resident.discard(name)
                self._forget_keep(name)
            self.gate.take_swap()
            decision = Decision(due[0], Action.UNLOAD, unloaded=tuple(due), expired=tuple(due))
            self.gate.change(decision.touches)
            return Swap(Ticket(decision, True, 0.0), self._commit, self._abort)

    def background(self, plan, version: str | None = None) -> Swap | None:
        """A change no request asked for (a prewarm, a keep-alive unload), only while the
        slot is free, no request waits and the view is synced: it never delays a request
        that is waiting, nor takes away a model that is generating.

        ``plan(cache, resident, busy)`` (pure; ``busy``: the models generating) returns
        an ``Outcome`` or None. Returns the ``Swap`` to carry out, or None (nothing changed).
        ``version``: the digest of the file a load would push (a stale copy: nothing).
        """
        with self._cond:
            if not self.gate.slot_free or not self._synced or self._down or len(self.scheduler):
                return None
            self._touch_active()
            outcome = plan(self.cache, self.resident, frozenset(self.gate.active()))
            if outcome is None or outcome.decision.action is Action.REJECTED:
                return None
            decision = outcome.decision
            if any(self.gate.generating(name) for name in decision.takes_away):
                return None
            if version is not None and self._stale(decision.model, version):
                return None
            self.gate.take_swap()
            self._adopt(outcome)
            self.gate.change(decision.touches)
            swap = Swap(Ticket(decision, True, 0.0, version), self._commit, self._abort)
            self._background = swap
            return swap

    def stopped(self, swap: Swap) -> None:
        """``swap``, a background swap, stopped before its model reached the worker (its
        push was cut midway: the worker keeps nothing partial; or its load not started):
        its model is not resident, nor cached if it was being pushed; what it did before
        stays done, and the slot goes back, synced."""
        with self._cond:
            model = swap.decision.model
            self.resident.discard(model)
            self._forget_keep(model)
            if swap.decision.action is Action.LOAD_FROM_STORE:
                self.cache.discard(model)
                self._versions.pop(model, None)
        swap.abort(synced=True)

    def next_due(self) -> float | None:
        """Seconds until a resident model's time is up (None: no time bound now)."""
        with self._cond:
            return self.resident.next_expiry()

    # -- keep_alive and pins ------------------------------------------------------------

    def _forget_keep(self, model: str) -> None:
        """``model`` left memory: its keep_alive ends, its file follows the policy again."""
        self._keep.pop(model, None)
        if model in self.cache:
            self.cache.set_ttl(model, None)

    def _set_keep(self, model: str, keep_alive: float | None) -> None:
        self._keep[model] = keep_alive
        if model in self.resident:
            self.resident.set_ttl(
                model,
                None if keep_alive is None else math.inf if keep_alive < 0 else keep_alive,
            )
        if model in self.cache and self.cache.ttl is not None:
            # The disk tier never drops a model sooner than its keep_alive keeps it resident.
            longer = keep_alive is not None and (keep_alive < 0 or keep_alive > self.cache.ttl)
            override = (math.inf if keep_alive < 0 else keep_alive) if longer else None
            self.cache.set_ttl(model, override)

    def _keep_longer(self, model: str, seconds: float | None) -> None:
        """Without a keep_alive asked: where a tier has a time-to-live shorter than
        ``seconds``, ``model``'s is ``seconds`` (PREWARM's keep-alive from the tail)."""
        if seconds is None:
            return
        for tier in (self.resident, self.cache):
            if model in tier and tier.ttl is not None and seconds > tier.ttl:
                tier.set_ttl(model, seconds)

    def _check_pin(self, model: str, size: int, footprint: int) -> None:
        tiers = ((self.cache, size, "cache"), (self.resident, footprint, "resident"))
        for tier, need, what in tiers:
            pinned = [name for name in tier.pinned() if name != model]
            count = len(pinned) + 1
            used = sum(tier.size_of(name) for name in pinned) + need
            if tier.capacity is not None and count > tier.capacity:
                raise PinConflict(
                    f"pinning {model} would pin {count} models in the {what} tier, "
                    f"which holds {tier.capacity} (pinned: {','.join(pinned)})"
                )
            if tier.max_bytes is not None and used > tier.max_bytes:
                raise PinConflict(
                    f"pinning {model} would pin {used} bytes in the {what} tier, "
                    f"whose budget is {tier.max_bytes} (pinned: {','.join(pinned)})"
                )
