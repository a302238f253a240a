"""The cost-aware GreedyDual family: ``gdsf`` (GreedyDual-Size-Frequency), ``lfu-da``
and ``gdsf-aged``.

Each member has a priority H = L + uses x value; the lowest H is the next
victim and evicting it raises the inflation L to its H (dynamic aging).
``gdsf`` values a use by what it costs to bring the model back (push and
load, from the learned ``CostModel``) per byte (or per slot under a count
budget); ``lfu-da`` values every use at 1. ``gdsf-aged`` is ``gdsf`` whose
use counts also decay: each use weighs 2^(-age / half_life), so a model that
was popular an hour ago does not outrank today's favourites for long.
Pure, like every policy.
"""

from __future__ import annotations

from model_store_server.policies.base import RecencyPolicy, Tier
from model_store_server.policies.cost_model import CostModel

GIB = 1024**3
# gdsf-aged's half-life of a use, in seconds of the policy's clock (FREQ_HALF_LIFE);
# the longest half-life in the lab's sweep (benchmarks/POLICIES.md, section 3) that keeps
# gdsf-aged within 3% of lru's bytes pushed on every drifting preset.
DEFAULT_FREQ_HALF_LIFE_S = 45.0


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

    ``half_life`` (seconds, None: never) makes the use counts decay: a use
    ``age`` seconds old counts 2^(-age / half_life), so the count that
    enters H is what the model's recent traffic supports.
    """

    name = "greedy-dual"
    uses_ttl = False

    def __init__(
        self,
        *,
        cost_model: CostModel | None = None,
        tier: Tier = Tier.CACHE,
        half_life: float | None = None,
        **bounds,
    ):
        super().__init__(**bounds)
        if half_life is not None and not half_life > 0:
            raise ValueError("half_life must be positive seconds")
        self.cost_model = cost_model or CostModel()
        self.tier = tier
        self.half_life = half_life
        self.inflation = 0.0  # L
        self._uses: dict[str, float] = {}  # as of the member's last use
        self._used_at: dict[str, float] = {}  # clock at the member's last use
        self._base: dict[str, float] = {}  # L at the member's last use

    def clone(self) -> GreedyDualPolicy:
        copy = super().clone()
        copy._uses = dict(self._uses)
        copy._used_at = dict(self._used_at)
        copy._base = dict(self._base)
        return copy

    def uses(self, model: str) -> float:
        """``model``'s use count now: each use weighs 2^(-its age / half_life) (1 if no
        half-life)."""
        count = self._uses[model]
        if self.half_life is None:
            return count
        return count * 0.5 ** ((self._clock() - self._used_at[model]) / self.half_life)

    def value(self, model: str) -> float:
        """What one use of ``model`` adds to its priority."""
        return 1.0

    def _count_use(self, model: str, first: bool) -> None:
        self._uses[model] = 1 if first else self.uses(model) + 1
        self._used_at[model] = self._clock()
        self._base[model] = self.inflation

    def touch(self, model: str) -> None:
        super().touch(model)
        self._count_use(model, first=False)

    def admit(self, model: str, size: int = 0) -> list[str]:
        new = model not in self
        victims = super().admit(model, size)
        if new:
            self._count_use(model, first=True)
        return victims

    def discard(self, model: str) -> bool:
        self._uses.pop(model, None)
        self._used_at.pop(model, None)
        self._base.pop(model, None)
        return super().discard(model)

    def _eviction_order(self) -> list[str]:
        # sorted() is stable: equal priorities stay least recently used first.
        return sorted(self._last_used, key=self.priority)

    def _evicting(self, model: str) -> None:
        self.inflation = max(self.inflation, self.priority(model))

    def priority(self, model: str) -> float:
        return self._base[model] + self.uses(model) * self.value(model)

    def _victim_reason(self, model: str) -> str:
        aged = "" if self.half_life is None else f" (half-life {self.half_life:g}s)"
        return (
            f"priority {self.priority(model):.4g} = L {self._base[model]:.4g} at its last use"
            f" + {self.uses(model):.4g} use(s){aged} x {self._value_text(model)}"
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


class AgedGDSFPolicy(GDSFPolicy):
    """``gdsf`` with use counts that decay with a half-life (FREQ_HALF_LIFE seconds), so it
    lets go of models whose popularity has passed sooner than ``gdsf``'s dynamic aging."""

    name = "gdsf-aged"

    def __init__(self, *, half_life: float | None = DEFAULT_FREQ_HALF_LIFE_S, **options):
        half_life = DEFAULT_FREQ_HALF_LIFE_S if half_life is None else half_life
        super().__init__(half_life=half_life, **options)
