"""What the store shows about its models and its worker.

``store_status`` is ``GET /status``, ``describe_models`` the model list the
OpenAI API serves, and ``LogLines`` the subscriber to the service's events
that writes the seed's one ``[/user_request]`` line per request and the
``[/models]`` line per explicit operation. Read-only: everything here comes
from ``SwapService``, its ``WorkerView`` and its events.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from model_store_server.config import StoreSettings
from model_store_server.core.events import ControlDone, RequestLogged
from model_store_server.core.orchestrator import SEED_ROUTE
from model_swap.logs import CONSOLE
from model_swap.names import InvalidModelName, validate_model_name

if TYPE_CHECKING:
    from model_store_server.core.orchestrator import SwapService


def describe_models(service: SwapService, names: list[str] | None = None) -> list[dict]:
    """``name``, ``size_bytes``, ``created`` (mtime) and ``state`` of models in MODELS_DIR.

    ``state`` is ``loaded`` (resident in a worker's memory), ``cached`` (on a
    worker's disk) or ``available`` (only in MODELS_DIR). ``names`` limits
    the answer to those models (unknown or invalid names are left out).
    """
    cached: set[str] = set()
    resident: set[str] = set()
    nodes = service.fleet.nodes
    for node in [n for n in nodes if n.healthy] or nodes:  # its best state on a live worker
        snapshot = node.view.snapshot()
        cached |= {entry.name for entry in snapshot.cached}
        resident |= {entry.name for entry in snapshot.resident}
    described = []
    for name in service.available() if names is None else names:
        try:
            validate_model_name(name)
            info = (service.models_dir / name).stat()
        except (InvalidModelName, OSError):
            continue
        if name in resident:
            state = "loaded"
        elif name in cached:
            state = "cached"
        else:
            state = "available"
        described.append(
            {
                "name": name,
                "size_bytes": info.st_size,
                "created": int(info.st_mtime),
                "state": state,
            }
        )
    return described


class LogLines:
    """Subscriber: the console lines of requests and explicit operations."""

    def __init__(self, settings: StoreSettings):
        self.settings = settings

    def __call__(self, event: object) -> None:
        if isinstance(event, RequestLogged):
            self.request(event)
        elif isinstance(event, ControlDone):
            self.control(event)

    def request(self, event: RequestLogged) -> None:
        """The one ``[/user_request]`` line per request (action ``none`` if never decided);
        ``done`` lists the evictions and unloads carried out on the worker.

        With several resident models configured, ``unloaded=[...]`` follows
        ``evicted=[...]`` (the seed's line, with the defaults, is unchanged).
        Requests that came in on another route (the OpenAI API) end with ``path=<route>``.
        """
        ticket, done = event.ticket, event.done
        CONSOLE.info(
            "[/user_request] ts=%s policy=%s model=%s action=%s decision_ms=%.3f "
            "worker_ms=%.1f cached=[%s] evicted=[%s]%s%s%s",
            datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            self.settings.cache_policy,
            event.model,
            ticket.decision.action if ticket else "none",
            ticket.decision_ms if ticket else 0.0,
            event.worker_ms,
            ",".join(event.cached),
            ",".join(done["evicted"]),
            f" unloaded=[{','.join(done['unloaded'])}]"
            if self.settings.residency_configured
            else "",
            "" if event.route == SEED_ROUTE else f" path={event.route}",
            f" worker={event.worker}" if event.worker else "",
        )

    def control(self, event: ControlDone) -> None:
        """The one ``[/models]`` line per explicit operation (load, unload, evict, pin,
        unpin, the idle sweep's unloads): what was done and what the worker holds now."""
        CONSOLE.info(
            "[/models] op=%s model=%s action=%s status=%d worker_ms=%.1f evicted=[%s] "
            "unloaded=[%s] resident=[%s] cached=[%s]%s",
            event.operation,
            event.model,
            event.ticket.decision.action if event.ticket else "none",
            event.status,
            event.ms,
            ",".join(event.done["evicted"]),
            ",".join(event.done["unloaded"]),
            ",".join(event.resident),
            ",".join(event.cached),
            f' error="{event.error}"' if event.error else "",
        )


def store_status(service: SwapService) -> dict:
    """``GET /status``: the seed's top-level fields describe the first worker; ``workers``
    lists every worker."""
    first = service.fleet.first()
    return {
        **_view_status(service, first),
        "worker_url": first.url,
        "transport": first.executor.transport.name,
        "pushes": service.transfers.describe(),  # running now: bytes done and total
        "explain": _explain(service, first),
        "workers": [worker_status(service, node) for node in service.fleet.nodes],
    }


def worker_status(service: SwapService, node) -> dict:
    """One worker for ``/status`` ``workers`` and ``GET /workers``."""
    snapshot = node.view.snapshot()
    waiting = sum(queue["waiting"] for queue in snapshot.queues.values())
    view = _view_status(service, node)
    return {
        "id": node.id,
        "url": node.url,
        "state": node.state,
        "since": datetime.fromtimestamp(node.changed_at, UTC).isoformat(timespec="seconds"),
        "last_error": node.last_error,
        "synced": snapshot.synced,
        "resident": [entry["name"] for entry in view["resident"]],
        "cached": [entry["name"] for entry in view["cached"]],
        "budgets": view["budgets"],
        "queue": {"generating": snapshot.generating, "waiting": waiting},
        "queues": snapshot.queues,
        "swapping": snapshot.swapping,
        "transport": node.executor.transport.name,
    }


def _view_status(service: SwapService, node) -> dict:
    snapshot = node.view.snapshot()
    cache, resident = node.view.cache, node.view.resident
    generating = snapshot.generating_by_model

    def member(entry) -> dict:
        return {
            "name": entry.name,
            "idle_seconds": entry.idle_seconds,
            "pinned": entry.pinned,
            "generating": generating.get(entry.name, 0),
        }

    return {
        "policy": service.settings.cache_policy,
        "max_cache_size": service.settings.max_cache_size,
        "ttl_seconds": service.settings.ttl_seconds,
        "capacity": cache.capacity,
        "ttl": cache.ttl,
        "cached": [{**member(entry), "size_bytes": entry.size_bytes} for entry in snapshot.cached],
        "loaded": snapshot.loaded,
        "resident": [
            {
                **member(entry),
                "estimated_bytes": entry.size_bytes,
                "keep_alive": node.view.keep_alive_of(entry.name),
            }
            for entry in snapshot.resident
        ],
        "budgets": {
            "cache": _budget(cache, snapshot.cached),
            "resident": _budget(resident, snapshot.resident),
        },
        "generating": snapshot.generating,
        "scheduler_max_wait": service.settings.scheduler_max_wait,
        "queues": snapshot.queues,
        "swapping": snapshot.swapping,
        "synced": snapshot.synced,
        "available": service.available(),
    }


def _explain(service: SwapService, node) -> dict:
    """Each tier's members in eviction order with their priority under the active policy
    and why each would (or would not) be the next victim, plus the learned swap costs."""
    cache, resident = node.view.explain()
    extras = {name: report() for name, report in service.explain_extras.items()}
    return {
        "cache": cache,
        "resident": resident,
        "cost_model": asdict(service.cost_model.rates),
        **extras,
    }


def _budget(tier, members) -> dict:
    """A tier's bounds and their current use, for ``/status``."""
    return {
        "max_models": tier.capacity,
        "models": len(members),
        "max_bytes": tier.max_bytes,
        "bytes": sum(entry.size_bytes for entry in members),
        "ttl_seconds": tier.ttl,
    }
