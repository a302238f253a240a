"""The part of ``WorkerView`` that reads it and brings it back to the worker's truth.

``snapshot`` and ``explain`` read the view consistently (for ``/status``,
metrics and the log lines); ``apply_worker_report`` adopts the worker's own
report (under the worker held exclusively), ``confirm`` what the worker says
about one model whose stream failed. A mixin of ``WorkerView``: every method
takes its lock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from model_store_server.decision import reconcile
from model_store_server.policies import CachePolicy
from model_store_server.policies.placement import Candidate, candidate


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
    queues: dict[str, dict] = field(default_factory=dict)

    @property
    def loaded(self) -> str | None:
        """The most recently used resident model (the seed's single ``loaded``)."""
        return self.resident[-1].name if self.resident else None


class ViewReport:
    """Reading the view and adopting the worker's reports (see module doc)."""

    # -- the worker's truth ------------------------------------------------------------------

    @property
    def synced(self) -> bool:
        with self._cond:
            return self._synced

    def mark_unsynced(self) -> None:
        """The worker contradicts this view: re-read it before the next decision."""
        with self._cond:
            self._synced = False

    def suspect(self, model: str) -> None:
        """A stream on ``model`` failed: no hit on it until the worker is re-read about it."""
        with self._cond:
            self._suspect.add(model)

    def is_suspect(self, model: str) -> bool:
        with self._cond:
            return model in self._suspect

    def apply_worker_report(
        self,
        cached: dict[str, int],
        resident: dict[str, int],
        digests: dict[str, str | None] | None = None,
    ) -> tuple[list[str], list[str]]:
        """Adopt the worker's report (the caller holds the slot, or the worker exclusively):
        from now on the view is synced, and no model is suspect.

        ``cached`` maps files to sizes, ``resident`` loaded models (least
        recently used first) to estimated bytes, ``digests`` the versions.
        Returns (files to delete, models to unload) to restore the bounds;
        the view no longer holds them, so no new generation starts on them.
        """
        with self._cond:
            self._versions = {name: (digests or {}).get(name) for name in cached}
            to_delete, to_unload = reconcile(self.cache, self.resident, cached, resident)
            for name in list(self._keep):
                if name not in self.resident:
                    self._forget_keep(name)
            self._synced = True
            self._suspect.clear()
            return to_delete, to_unload

    def confirm(self, model: str, cached: Iterable[str], resident: Iterable[str]) -> None:
        """After ``model``'s stream failed: forget what the worker no longer holds (the
        caller holds a swap draining ``model``); other models are left as they are."""
        cached, resident = set(cached), set(resident)
        with self._cond:
            for name in list(self.cache.members()):
                if name not in cached:
                    self._forget([name])
            for name in list(self.resident.members()):
                if name not in resident:
                    self.resident.discard(name)
                    self._forget_keep(name)
            self._suspect.discard(model)

    # -- reading -----------------------------------------------------------------------------

    def _members(self, tier: CachePolicy, names: Iterable[str]) -> tuple[Member, ...]:
        return tuple(
            Member(
                name, round(tier.idle_seconds(name), 3), tier.size_of(name), tier.is_pinned(name)
            )
            for name in names
        )

    def snapshot(self) -> Snapshot:
        with self._cond:
            active = self.gate.active()
            return Snapshot(
                cached=self._members(self.cache, self.cache.members()),
                resident=self._members(self.resident, self.resident.recency()),
                generating=sum(active.values()),
                swapping=self.gate.swapping,
                synced=self._synced,
                generating_by_model=active,
                queues=self.scheduler.describe(self._now()),
            )

    def candidate(
        self,
        worker: str,
        order: int,
        model: str,
        *,
        size: int,
        footprint: int,
        pending: int,
        placed: int,
        coming: list[tuple[str, int, int]],
    ) -> Candidate:
        """This worker for ``model`` as placement sees it; read consistently, nothing changed.

        ``pending``: requests for ``model`` placed here and not granted yet (those waiting
        at this view among them); ``placed``: such requests for any model; ``coming``: the
        other models placed here, with their size and footprint.
        """
        with self._cond:
            active = self.gate.active()
            waiting = self.scheduler.describe(self._now())
            busy = {m for m, n in active.items() if n} | set(waiting) | {m for m, *_ in coming}
            return candidate(
                worker,
                self.cache,
                self.resident,
                model,
                size=size,
                footprint=footprint,
                order=order,
                queue=sum(active.values()) + max(placed, len(self.scheduler)),
                model_queue=active.get(model, 0)
                + max(pending, waiting.get(model, {}).get("waiting", 0)),
                busy_models=len(busy | ({model} if pending else set())),
                incoming=bool(pending or model in waiting or self.gate.changing(model)),
                coming=coming,
            )

    def quiet(self) -> bool:
        """Nothing generates, waits or swaps on this worker (a drain is complete)."""
        with self._cond:
            return self.gate.idle and not len(self.scheduler)

    def cached_names(self) -> tuple[str, ...]:
        """The worker's files in eviction order (the log line's ``cached=[...]``), cheaply."""
        with self._cond:
            return tuple(self.cache.members())

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
