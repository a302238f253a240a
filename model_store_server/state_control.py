"""The part of ``WorkerState`` that acts on request or on time rather than per generation.

Unloading or evicting a model on request (``/models/...``), unpinning, the
idle sweep's unloads, and the bookkeeping of a request's ``keep_alive`` and
of pins. A mixin of ``WorkerState``: every method runs under its condition
variable and follows its rules (the one swap slot, no model taken away while
it generates, waits bounded by a deadline).
"""

from __future__ import annotations

import math
import time

from model_store_server.decision import Action, Decision
from model_store_server.leases import Ticket


class PinConflict(Exception):
    """Pinning would hold more than a tier can keep; nothing was changed."""


class ExplicitControl:
    """Explicit unload/evict/unpin, the idle sweep, keep_alive and pins (see module doc)."""

    def begin_change(self, model: str, action: Action, timeout: float) -> Ticket:
        """Take ``model`` out of memory (UNLOAD) or off the worker (EVICT) on request.

        Waits, bounded, for the swap slot and for ``model``'s generations; the
        model is unpinned. Returns a ticket that owns the slot (carry it out
        with ``swap``) or, if there is nothing to do, one that does not.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            self._wait(lambda: not self._swapping, deadline, "another model swap to finish")
            self._swapping = True
            self._draining.add(model)
            try:
                self._wait(
                    lambda: not self._active[model],
                    deadline,
                    f"running generations on {model} to finish",
                )
            except BaseException:
                self._swapping = False
                self._cond.notify_all()
                raise
            finally:
                self._draining.discard(model)
            started = time.perf_counter()
            evict = action is Action.EVICT
            present = model in (self.cache if evict else self.resident)
            self.cache.unpin(model)  # taken out on request: no longer pinned on either tier
            self.resident.discard(model)
            self._forget_keep(model)
            if evict:
                self.cache.discard(model)
                self._versions.pop(model, None)
            decision = Decision(
                model,
                action,
                evicted=(model,) if evict and present else (),
                unloaded=(model,) if not evict and present else (),
            )
            ms = (time.perf_counter() - started) * 1000
            if not present:
                self._swapping = False
                self._cond.notify_all()
                return Ticket(decision, False, ms)
            self._changing = decision.touches
            return Ticket(decision, True, ms)

    def unpin(self, model: str) -> bool:
        """Unpin ``model`` in both tiers (pinning goes through ``begin(..., pin=True)``);
        False if the worker does not hold it."""
        with self._cond:
            if model not in self.cache:
                return False
            self.cache.unpin(model)
            self.resident.unpin(model)
            return True

    def begin_sweep(self) -> Ticket | None:
        """Unload resident models whose time is up (none generating), if no swap runs.

        Returns a ticket owning the slot (``Decision(UNLOAD)`` naming them in
        ``unloaded``), or None if there is nothing to do now. The disk tier is
        left to the next request, which reports its expired files in
        ``X-Evicted`` as the seed does.
        """
        with self._cond:
            if self._swapping or not self._synced:
                return None
            self._touch_active()
            due = self.resident.expired()
            if not due:
                return None
            for name in due:
                self.resident.discard(name)
                self._forget_keep(name)
            self._swapping = True
            decision = Decision(due[0], Action.UNLOAD, unloaded=tuple(due), expired=tuple(due))
            self._changing = decision.touches
            return Ticket(decision, True, 0.0)

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
