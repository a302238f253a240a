"""The front server's own counters as Prometheus metrics, in the service's ``/metrics``.

``register_front_metrics(app, server)`` adds a collector to the registry of the app's
``metrics`` extension (both services have one), read at each scrape:

- ``model_swap_http_loop_restarts_total``: times the event loop failed and was run again;
- ``model_swap_http_refused_total{reason="queue_full"}``: requests answered 503 because
  MAX_QUEUED_REQUESTS requests were already waiting for a thread;
- ``model_swap_http_slow_readers_cut_total``: responses cut below MIN_DOWNLOAD_RATE;
- ``model_swap_http_probes_answered_total``: ``/health`` and ``/ready`` answered by the loop;
- ``model_swap_http_queued_requests``: requests waiting for a thread now.
"""

from __future__ import annotations

import logging

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

logger = logging.getLogger(__name__)


class FrontCollector:
    """A Prometheus collector over one FrontServer's counters (thread-safe reads)."""

    def __init__(self, server):
        self._server = server

    def collect(self):
        server = self._server
        yield CounterMetricFamily(
            "model_swap_http_loop_restarts",
            "Times the front server's event loop failed and was run again",
            value=server.loop_restarts,
        )
        refused = CounterMetricFamily(
            "model_swap_http_refused",
            "Requests the front server answered 503 itself, by reason",
            labels=["reason"],
        )
        refused.add_metric(["queue_full"], server.refused_queue_full)
        yield refused
        yield CounterMetricFamily(
            "model_swap_http_slow_readers_cut",
            "Responses cut because the client read slower than MIN_DOWNLOAD_RATE",
            value=server.slow_readers_cut,
        )
        yield CounterMetricFamily(
            "model_swap_http_probes_answered",
            "GET /health and GET /ready answered by the event loop",
            value=server.probes_answered,
        )
        yield GaugeMetricFamily(
            "model_swap_http_queued_requests",
            "Requests waiting for a thread of the front server's pool",
            value=server.queued_requests(),
        )


def register_front_metrics(app, server) -> bool:
    """Add ``server``'s collector to ``app``'s metrics registry; False if it has none."""
    registry = getattr(getattr(app, "extensions", {}).get("metrics"), "registry", None)
    if registry is None:
        return False
    try:
        registry.register(FrontCollector(server))
    except ValueError:  # already registered: a second server for the same app (tests)
        logger.debug("front server metrics already registered for this app")
        return False
    return True
