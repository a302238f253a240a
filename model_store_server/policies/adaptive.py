"""``adaptive``: evict as whichever candidate policy would have cost least lately.

The tier keeps shadow ("ghost") copies of several policies (the experts:
``gdsf``, ``lru``, ``lfu-da``, ``gdsf-aged``). Each ghost sees every request
the tier sees and keeps its own members under the same bounds, without any
file: bookkeeping only. A request a ghost does not hold is a miss for it,
charged what the cost model says the miss would take on this tier (push and
load on the disk tier, load on the resident tier, plus one worker call per
model it evicts). The sum over the last ``window`` requests is each expert's
score; the tier evicts as the leader would. Switching is hysteretic: a
challenger takes the lead only when its score is below the leader's by more
than ``margin`` (a share), and not within ``window`` / 4 requests of the
last switch, so a stationary stream does not make it flap.

Evicting "as the leader would": the members the leader's ghost no longer
holds go first (least recently used first), then the rest in the leader's
eviction order; when the tier holds what the leader holds, it makes exactly
the leader's choices. Pure like every policy: no I/O, no logging.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

from model_store_server.policies.base import CacheFull, RecencyPolicy, Tier
from model_store_server.policies.cost_model import CostModel

EXPERTS = ("gdsf", "lru", "lfu-da", "gdsf-aged")  # the first leads until the window says
DEFAULT_WINDOW = 400  # requests
DEFAULT_MARGIN = 0.05  # a challenger must be this much cheaper to take the lead
MICROS = 1_000_000  # scores are integer microseconds: sums over a window stay exact


class AdaptivePolicy(RecencyPolicy):
    """Evicts as the expert with the least modelled swap cost over the last ``window``
    requests; ``experts`` maps each candidate's name to its ghost (a fresh policy with
    this tier's bounds, built by ``create_policy``)."""

    name = "adaptive"
    uses_ttl = False

    def __init__(
        self,
        *,
        experts: Mapping[str, RecencyPolicy],
        cost_model: CostModel | None = None,
        tier: Tier = Tier.CACHE,
        window: int = DEFAULT_WINDOW,
        margin: float = DEFAULT_MARGIN,
        **bounds,
    ):
        super().__init__(**bounds)
        if not experts:
            raise ValueError("adaptive needs at least one expert")
        if window < 1:
            raise ValueError("window must be at least 1 request")
        if not 0 <= margin < 1:
            raise ValueError("margin must be in [0, 1)")
        self.cost_model = cost_model or CostModel()
        self.tier = tier
        self.window = window
        self.margin = margin
        self._experts = dict(experts)
        self._names = tuple(self._experts)
        self._recent: deque[tuple[int, ...]] = deque(maxlen=window)
        self._totals = [0] * len(self._names)
        self.leader = self._names[0]
        self.switches = 0
        self._since_switch = 0

    def clone(self) -> AdaptivePolicy:
        copy = super().clone()
        copy._experts = {name: ghost.clone() for name, ghost in self._experts.items()}
        copy._recent = deque(self._recent, maxlen=self.window)
        copy._totals = list(self._totals)
        return copy

    # -- what the experts would have paid ----------------------------------------------------

    def miss_seconds(self, size: int) -> float:
        """Modelled seconds of a miss of ``size`` bytes on this tier (without worker calls)."""
        seconds = self.cost_model.load_seconds(size)
        if self.tier is Tier.CACHE:
            seconds += self.cost_model.push_seconds(size)
        return seconds

    def _observe(self, model: str, size: int) -> None:
        """One request for ``model`` (``size`` bytes): every ghost serves it, and the scores
        and the leader follow."""
        costs = []
        for ghost in self._experts.values():
            if model in ghost:
                ghost.touch(model)
                costs.append(0)
                continue
            try:
                victims = ghost.admit(model, size)
            except CacheFull:  # larger than the budget: the tier refuses it too
                victims = []
            seconds = self.miss_seconds(size) + self.cost_model.call_seconds(len(victims))
            costs.append(round(seconds * MICROS))
        if len(self._recent) == self.window:
            for index, cost in enumerate(self._recent[0]):
                self._totals[index] -= cost
        self._recent.append(tuple(costs))
        for index, cost in enumerate(costs):
            self._totals[index] += cost
        self._since_switch += 1
        self._choose_leader()

    def _choose_leader(self) -> None:
        scores = dict(zip(self._names, self._totals, strict=True))
        best = min(self._names, key=scores.__getitem__)  # ties: the earlier expert
        settled = self._since_switch >= max(1, self.window // 4)
        if (
            best != self.leader
            and settled
            and scores[best] < scores[self.leader] * (1 - self.margin)
        ):
            self.leader = best
            self.switches += 1
            self._since_switch = 0

    def expert(self, name: str | None = None) -> RecencyPolicy:
        """The ghost of expert ``name`` (default: the leader's). Read it, never change it."""
        return self._experts[name or self.leader]

    def standings(self) -> dict:
        """The leader, each expert's modelled swap seconds over the window, and the leader's
        lead over the runner-up (percent of the runner-up's score)."""
        costs = {
            name: round(total / MICROS, 3)
            for name, total in zip(self._names, self._totals, strict=True)
        }
        others = [cost for name, cost in costs.items() if name != self.leader]
        runner_up = min(others, default=costs[self.leader])
        lead = (runner_up - costs[self.leader]) / runner_up * 100 if runner_up else 0.0
        return {
            "leader": self.leader,
            "window_requests": len(self._recent),
            "window_swap_seconds": costs,
            "lead_percent": round(lead, 1),
            "switches": self.switches,
        }

    # -- the tier's own bookkeeping ----------------------------------------------------------

    def touch(self, model: str) -> None:
        super().touch(model)
        self._observe(model, self._sizes[model])

    def refresh(self, model: str) -> None:
        super().refresh(model)
        for ghost in self._experts.values():
            if model in ghost:
                ghost.refresh(model)

    def resize(self, model: str, size: int) -> None:
        super().resize(model, size)
        for ghost in self._experts.values():
            if model in ghost:
                ghost.resize(model, size)

    def admit(self, model: str, size: int = 0) -> list[str]:
        if model in self or not self.can_admit(model, size):
            return super().admit(model, size)  # a use, or CacheFull changing nothing
        self._observe(model, size)
        return super().admit(model, size)

    def _eviction_order(self) -> list[str]:
        ghost = self._experts[self.leader]
        gone = [model for model in self._last_used if model not in ghost]
        return gone + [model for model in ghost.members() if model in self._last_used]

    def priority(self, model: str) -> float:
        ghost = self._experts[self.leader]
        if model in ghost:
            return ghost.priority(model)
        held = [ghost.priority(m) for m in self._last_used if m in ghost]
        return min(held, default=0.0) - 1.0

    def _victim_reason(self, model: str) -> str:
        ghost = self._experts[self.leader]
        standings = self.standings()
        lead = (
            f"{self.leader} leads by {standings['lead_percent']:g}% over "
            f"{standings['window_requests']} requests"
        )
        if model not in ghost:
            return f"{lead}; {self.leader} no longer holds it"
        return f"{lead}; as {self.leader}: {ghost._victim_reason(model)}"

    def explain(self) -> list[dict]:
        standings = self.standings()
        rows = super().explain()
        for row in rows:
            row["expert"] = standings["leader"]
            row["expert_lead_percent"] = standings["lead_percent"]
            row["expert_swap_seconds"] = standings["window_swap_seconds"]
        return rows
