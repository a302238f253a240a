"""The pure swap decision: given the policy, the loaded model and a request, what happens.

``decide`` updates the policy's bookkeeping (sweep, touch, admit) and returns
the action plus the models to evict; it performs no I/O and never logs. The
caller carries the decision out on the worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from model_store_server.cache_policy import CachePolicy


class Action(StrEnum):
    ALREADY_LOADED = "already_loaded"
    LOAD_FROM_LOCAL_STORE = "load_from_local_store"
    LOAD_FROM_STORE = "load_from_store"
    REJECTED = "rejected"


@dataclass(frozen=True)
class Decision:
    model: str
    action: Action
    evicted: tuple[str, ...] = ()

    @property
    def changes_worker(self) -> bool:
        """Whether carrying this decision out needs any call to the worker."""
        return bool(self.evicted) or self.action in (
            Action.LOAD_FROM_LOCAL_STORE,
            Action.LOAD_FROM_STORE,
        )

    def headers(self) -> dict[str, str]:
        """The response headers that tell a client what happened."""
        return {"X-Cache-Action": str(self.action), "X-Evicted": ",".join(self.evicted)}

    def replaces(self, loaded: str | None) -> bool:
        """Whether carrying this out unloads or evicts ``loaded``."""
        if loaded is None:
            return False
        return loaded in self.evicted or self.action in (
            Action.LOAD_FROM_LOCAL_STORE,
            Action.LOAD_FROM_STORE,
        )


def would_replace_loaded(policy: CachePolicy, model: str, loaded: str | None) -> bool:
    """Whether serving ``model`` now would unload or evict ``loaded``. Read-only."""
    if loaded is None:
        return False
    return model != loaded or policy.is_expired(loaded)


def would_reject(policy: CachePolicy, model: str) -> bool:
    """Whether the policy would refuse ``model`` now. Read-only."""
    return model not in policy and not policy.can_admit(model)


def decide(policy: CachePolicy, model: str, loaded: str | None) -> Decision:
    """Decide how to serve ``model``, updating the policy's bookkeeping."""
    evicted = policy.expire()
    if model in policy:
        policy.touch(model)
        action = Action.ALREADY_LOADED if model == loaded else Action.LOAD_FROM_LOCAL_STORE
    elif not policy.can_admit(model):
        action = Action.REJECTED
    else:
        evicted += policy.admit(model)
        action = Action.LOAD_FROM_STORE
    return Decision(model=model, action=action, evicted=tuple(evicted))
