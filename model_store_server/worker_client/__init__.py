"""How the store talks to its inference workers over HTTP.

``client`` (``WorkerClient``: control calls, pushes, inference, the identity
proof), ``pool`` (its keep-alive connections), ``stream`` (a streaming
answer), ``report`` (the worker's ``GET /status`` read and checked) and
``errors`` (what a call fails with). Every name is re-exported here, so
``from model_store_server.worker_client import WorkerClient`` is the import.
"""

from model_store_server.worker_client.client import WorkerClient
from model_store_server.worker_client.errors import (
    SourceChanged,
    WorkerError,
    WorkerUnavailable,
    WorkerUnproven,
)
from model_store_server.worker_client.report import WorkerReport
from model_store_server.worker_client.stream import InferenceStream

__all__ = [
    "InferenceStream",
    "SourceChanged",
    "WorkerClient",
    "WorkerError",
    "WorkerReport",
    "WorkerUnavailable",
    "WorkerUnproven",
]
