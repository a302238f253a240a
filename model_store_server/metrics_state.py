"""The store's gauges read at scrape time from its workers' views (``StateCollector``).

The unlabelled families describe the first worker, as ``/status``'s
top-level fields do; the ``model_swap_worker_*`` families carry a ``worker``
label (its ``host:port``), one series per worker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily

if TYPE_CHECKING:
    from model_store_server.core.orchestrator import SwapService


class StateCollector:
    """Reads the views' snapshots at scrape time: the tiers against their budgets. The
    unlabelled families describe the first worker (as ``/status``'s top-level fields);
    the ``model_swap_worker_*`` families carry a ``worker`` label, one series per worker."""

    def __init__(self, service: SwapService):
        self.service = service

    def describe(self):
        return []

    def collect(self):
        service = self.service
        view = service.fleet.first().view
        snapshot = view.snapshot()
        tiers = {
            "cache": (view.cache, snapshot.cached),
            "resident": (view.resident, snapshot.resident),
        }
        models = GaugeMetricFamily(
            "model_swap_models", "Models held in each tier (cache: worker disk)", labels=["tier"]
        )
        max_models = GaugeMetricFamily(
            "model_swap_models_max", "How many models each tier may hold", labels=["tier"]
        )
        used = GaugeMetricFamily(
            "model_swap_tier_bytes",
            "Bytes held in each tier (cache: file sizes; resident: estimated memory)",
            labels=["tier"],
        )
        budget = GaugeMetricFamily(
            "model_swap_tier_max_bytes",
            "Each tier's byte budget (absent when unbounded)",
            labels=["tier"],
        )
        per_model = GaugeMetricFamily(
            "model_swap_model_bytes", "Bytes of each model in a tier", labels=["tier", "model"]
        )
        for tier_name, (tier, members) in tiers.items():
            models.add_metric([tier_name], len(members))
            if tier.capacity is not None:
                max_models.add_metric([tier_name], tier.capacity)
            used.add_metric([tier_name], sum(m.size_bytes for m in members))
            if tier.max_bytes is not None:
                budget.add_metric([tier_name], tier.max_bytes)
            for member in members:
                per_model.add_metric([tier_name, member.name], member.size_bytes)
        yield from (models, max_models, used, budget, per_model)
        yield GaugeMetricFamily(
            "model_swap_requests_generating",
            "Generations running on the worker through this store",
            value=snapshot.generating,
        )
        yield GaugeMetricFamily(
            "model_swap_requests_waiting",
            "Requests queued for their turn (behind a swap, running generations or the "
            "scheduler's group)",
            value=sum(queue["waiting"] for queue in snapshot.queues.values()),
        )
        yield GaugeMetricFamily(
            "model_swap_swap_in_progress", "1 while a swap runs", value=int(snapshot.swapping)
        )
        yield GaugeMetricFamily(
            "model_swap_worker_synced",
            "1 when the store's view matches the worker's last report",
            value=int(snapshot.synced),
        )
        pushing = GaugeMetricFamily(
            "model_swap_push_in_progress_bytes",
            "Bytes sent so far of each push running now",
            labels=["model"],
        )
        for progress in service.transfers.running():
            pushing.add_metric([progress.model], progress.done)
        yield pushing
        yield from _worker_families(service)


def _worker_families(service: SwapService):
    """Per worker: up, draining, models and bytes per tier, generating, waiting."""
    up = GaugeMetricFamily(
        "model_swap_worker_up", "1 while the worker answers (its health probe)", labels=["worker"]
    )
    draining = GaugeMetricFamily(
        "model_swap_worker_draining", "1 while nothing new is placed on it", labels=["worker"]
    )
    models = GaugeMetricFamily(
        "model_swap_worker_models", "Models each worker holds per tier", labels=["worker", "tier"]
    )
    used = GaugeMetricFamily(
        "model_swap_worker_tier_bytes", "Bytes held per worker and tier", labels=["worker", "tier"]
    )
    generating = GaugeMetricFamily(
        "model_swap_worker_requests_generating", "Generations running", labels=["worker"]
    )
    waiting = GaugeMetricFamily(
        "model_swap_worker_requests_waiting", "Requests queued for their turn", labels=["worker"]
    )
    for node in service.fleet.nodes:
        snapshot = node.view.snapshot()
        up.add_metric([node.id], int(node.healthy))
        draining.add_metric([node.id], int(node.draining or node.gone))
        for tier, members in (("cache", snapshot.cached), ("resident", snapshot.resident)):
            models.add_metric([node.id, tier], len(members))
            used.add_metric([node.id, tier], sum(m.size_bytes for m in members))
        generating.add_metric([node.id], snapshot.generating)
        queued = sum(queue["waiting"] for queue in snapshot.queues.values())
        waiting.add_metric([node.id], queued)
    yield from (up, draining, models, used, generating, waiting)
