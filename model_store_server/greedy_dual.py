"""The cost-aware GreedyDual family: ``gdsf`` (GreedyDual-Size-Frequency) and ``lfu-da``.

Each member has a priority H = L + uses x value; the lowest H is the next
victim and evicting it raises the inflation L to its H (dynamic aging).
``gdsf`` values a use by what it costs to bring the model back (push and
load, from the learned ``CostModel``) per byte (or per slot under a count
budget); ``lfu-da`` values every use at 1. Pure, like every policy.
"""

from __future__ import annotations

from model_store_server.cost_model import CostModel
from model_store_server.policy_base import RecencyPolicy, Tier

GIB = 1024**3


class GreedyDualPolicy(RecencyPolicy):
    """The GreedyDual family: each member has a priority H = L + uses x value.

    A use (``touch``, or ``admit`` of a new member, with one use) records the
    current inflation L as the member's base; H is evaluated when victims are
    chosen, so a value that follows measurements (gdsf's costs) is the same
    for every member at that moment. The lowest H is the next victim (ties:
    least recently used first), and evicting it raises L to its H, so a
    member that is not used ages relative to newcomers (dynamic aging). Uses count while
    a model is a member and restart from one after it leaves. ``refresh``
    (a generation running or ending) restarts the idle time but is not a use.
    Subclasses define ``value``; no time bound unless set per member.
    """

    name = "greedy-dual"
    uses_ttl = False

    def __init__(
        self,
        *,
        cost_model: CostModel | None = None,
        tier: Tier = Tier.CACHE,
        **bounds,
    ):
        super().__init__(**bounds)
        self.cost_model = cost_model or CostModel()
        self.tier = tier
        self.inflation = 0.0  # L
        self._uses: dict[str, int] = {}
        self._base: dict[str, float] = {}  # L at the member's last use

    def clone(self) -> GreedyDualPolicy:
        copy = super().clone()
        copy._uses = dict(self._uses)
        copy._base = dict(self._base)
        return copy

    def value(self, model: str) -> float:
        """What one use of ``model`` adds to its priority."""
        return 1.0

    def _rank(self, model: str) -> None:
        self._base[model] = self.inflation

    def touch(self, model: str) -> None:
        super().touch(model)
        self._uses[model] += 1
        self._rank(model)

    def admit(self, model: str, size: int = 0) -> list[str]:
        new = model not in self
        victims = super().admit(model, size)
        if new:
            self._uses[model] = 1
            self._rank(model)
        return victims

    def discard(self, model: str) -> bool:
        self._uses.pop(model, None)
        self._base.pop(model, None)
        return super().discard(model)

    def _eviction_order(self) -> list[str]:
        # sorted() is stable: equal priorities stay least recently used first.
        return sorted(self._last_used, key=self.priority)

    def _evicting(self, model: str) -> None:
        self.inflation = max(self.inflation, self.priority(model))

    def priority(self, model: str) -> float:
        return self._base[model] + self._uses[model] * self.value(model)

    def _victim_reason(self, model: str) -> str:
        return (
            f"priority {self.priority(model):.4g} = L {self._base[model]:.4g} at its last use"
            f" + {self._uses[model]} use(s) x {self._value_text(model)}"
        )

    def _value_text(self, model: str) -> str:
        return "1"


class LFUDAPolicy(GreedyDualPolicy):
    """LFU with dynamic aging: priority L + uses; least frequently used goes first."""

    name = "lfu-da"


class GDSFPolicy(GreedyDualPolicy):
    """GreedyDual-Size-Frequency: priority L + uses x cost / space.

    cost: the seconds to make the model resident again once it is gone from
    this tier (disk tier: push and load; resident tier: load only), from the
    injected ``CostModel``. space: what it takes of the binding budget: its
    bytes (in GiB) when the tier has a byte budget, else one slot.
    """

    name = "gdsf"

    def cost(self, model: str) -> float:
        """Modelled seconds to make ``model`` resident again if this tier lets it go."""
        size = self._sizes[model]
        seconds = self.cost_model.load_seconds(size)
        if self.tier is Tier.CACHE:
            seconds += self.cost_model.push_seconds(size)
        return seconds

    def space(self, model: str) -> float:
        return max(self._sizes[model], 1) / GIB if self.max_bytes is not None else 1.0

    def value(self, model: str) -> float:
        return self.cost(model) / self.space(model)

    def _value_text(self, model: str) -> str:
        unit = "GiB" if self.max_bytes is not None else "slot"
        return f"cost {self.cost(model):.3g}s / {self.space(model):.3g} {unit}"
