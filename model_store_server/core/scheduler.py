"""Per-model queues: which model's requests are served next, and who waits.

The rule (pure: every method takes ``now``; the view calls it under its lock):

- A request whose model is resident is served at once (a hit) unless another
  model's oldest waiting request has waited ``max_wait`` seconds; then it
  queues behind (no request starves behind a steady stream of hits).
- A request that needs the worker changed queues for its model. The next
  model is the one whose oldest request waits longest (first come, first
  served between models). Its group is every request queued for it that
  arrived before the next model's oldest request plus ``max_wait``; the group
  is served together once the model is in, before the next swap.
- While the next model's oldest request has waited less than ``max_wait``,
  its swap does not take away a model that is still generating (it is
  *patient*); after that it drains it.

``max_wait = 0`` is strict arrival order: a group is only the requests that
arrived before any other model's, and no hit overtakes a waiting request.
Fairness bound: a request waits at most, for each model ahead of it,
``max_wait`` plus the generations running on the models its swap takes
away plus one swap.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass


@dataclass(eq=False)
class Waiter:
    """One queued request (its arrival, for the rule; what the view needs to serve it)."""

    model: str
    arrived: float
    seq: int
    version: str | None = None
    keep_alive: float | None = None
    pin: bool = False
    started: float = 0.0  # time.perf_counter() at arrival (for the decision's wait)
    granted: object = None  # a Hit handed over while it waited (see WorkerView)

    def before(self, other: Waiter, slack: float) -> bool:
        """Arrived before ``other`` plus ``slack`` seconds (ties broken by arrival order)."""
        if slack > 0:
            return self.arrived < other.arrived + slack or self.seq < other.seq
        return (self.arrived, self.seq) < (other.arrived, other.seq)


class Scheduler:
    """See the module docstring. Not thread-safe on its own: the view's lock guards it."""

    def __init__(self, max_wait: float):
        if max_wait < 0:
            raise ValueError("max_wait must be >= 0")
        self.max_wait = max_wait
        self._queues: dict[str, deque[Waiter]] = {}
        self._seq = itertools.count()
        self._claimed: set[str] = set()  # models whose swap is under way (see claim)

    # -- queueing ------------------------------------------------------------------------

    def arrive(self, model: str, now: float, **details) -> Waiter:
        waiter = Waiter(model, now, next(self._seq), **details)
        self._queues.setdefault(model, deque()).append(waiter)
        return waiter

    def leave(self, waiter: Waiter) -> None:
        queue = self._queues.get(waiter.model)
        if queue is not None and waiter in queue:
            queue.remove(waiter)
            if not queue:
                del self._queues[waiter.model]

    # -- the rule --------------------------------------------------------------------------

    def _heads(self) -> list[Waiter]:
        return sorted((q[0] for q in self._queues.values()), key=lambda w: (w.arrived, w.seq))

    def _starving(self, model: str, now: float) -> bool:
        """Another model's oldest request has waited ``max_wait``."""
        return any(
            head.model != model and now - head.arrived >= self.max_wait for head in self._heads()
        )

    def may_hit(self, model: str, now: float, waiter: Waiter | None = None) -> bool:
        """Whether a request for resident ``model`` may be served now (``waiter``: it queued)."""
        if waiter is not None and self.in_group(waiter, now):
            return True
        return not self._starving(model, now)

    def next_model(self) -> str | None:
        heads = self._heads()
        return heads[0].model if heads else None

    def in_group(self, waiter: Waiter, now: float) -> bool:
        """Whether ``waiter`` belongs to the group served next (or, its model claimed, the
        group its swap serves: arrived before another model's oldest plus ``max_wait``)."""
        heads = self._heads()
        if waiter.model in self._claimed:
            others = [head for head in heads if head.model != waiter.model]
            return not others or waiter.before(others[0], self.max_wait)
        if not heads or heads[0].model != waiter.model:
            return False
        return len(heads) == 1 or waiter.before(heads[1], self.max_wait)

    def claim(self, model: str) -> None:
        """A swap bringing ``model`` in has begun: until ``unclaim`` its group is what it
        was, whichever model's request is oldest by then."""
        self._claimed.add(model)

    def unclaim(self, model: str) -> None:
        """``model``'s swap ended (its group served, or the swap failed)."""
        self._claimed.discard(model)

    def group(self, model: str, now: float) -> list[Waiter]:
        """The waiters for ``model`` served with the group now (empty if not next)."""
        return [w for w in self._queues.get(model, ()) if self.in_group(w, now)]

    def patient(self, model: str, now: float) -> bool:
        """Whether a swap for ``model`` should not yet drain models that are generating
        (its oldest request has waited less than ``max_wait``)."""
        queue = self._queues.get(model)
        return bool(queue) and now - queue[0].arrived < self.max_wait

    def next_change(self, now: float) -> float:
        """Seconds until a waiting request reaches ``max_wait`` (inf: none will)."""
        ahead = [h.arrived + self.max_wait - now for h in self._heads()]
        ahead = [t for t in ahead if t > 0]
        return min(ahead, default=math.inf)

    # -- reading --------------------------------------------------------------------------

    def describe(self, now: float) -> dict[str, dict]:
        """Per model: requests waiting and the oldest one's wait in seconds (``/status``)."""
        return {
            model: {"waiting": len(queue), "oldest_wait_s": round(now - queue[0].arrived, 3)}
            for model, queue in sorted(self._queues.items())
        }

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())
