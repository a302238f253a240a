"""What a worker says it holds: its ``GET /status`` answer, read and checked.

A name the worker reports that is not a valid model name (it could forge a
log line or markup) is left out of the report and logged escaped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from model_store_server.worker_client.errors import WorkerError
from model_swap.names import InvalidModelName, validate_model_name

logger = logging.getLogger("model_store_server.worker_client")


@dataclass(frozen=True)
class WorkerReport:
    """What the worker says it holds (its ``GET /status``)."""

    cached: list[str]
    loaded: str | None
    n_ctx: int | None = None
    parallel: int = 1  # sequences per resident model, each with n_ctx tokens of KV cache
    kv_cache_bytes: int = 0  # host memory each resident model's prompt cache may hold
    # Kept prompts: per resident model its worker counters, and the states saved on disk.
    kv: dict = field(default_factory=dict)
    # The digest each cached file was verified against (None: the worker does not know).
    digests: dict[str, str | None] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)  # each cached file's bytes
    # Loaded models, least recently used first, with their estimated memory in bytes.
    resident: dict[str, int] = field(default_factory=dict)


def read_report(data: dict) -> WorkerReport:
    """The report in a worker's ``GET /status`` JSON; WorkerError if it is not one."""
    try:
        entries = [e for e in data["cached"] if _valid_name(e["name"])]
        loaded = data["loaded"] if data["loaded"] is None or _valid_name(data["loaded"]) else None
        if "resident" in data:
            resident = {
                entry["name"]: int(entry.get("estimated_bytes") or 0)
                for entry in data["resident"]
                if _valid_name(entry["name"])
            }
        else:  # a worker that holds one model
            resident = {loaded: 0} if loaded else {}
        return WorkerReport(
            cached=[entry["name"] for entry in entries],
            loaded=loaded,
            n_ctx=data.get("n_ctx"),
            # KV sequences per model (PARALLEL, plus prefix reuse's spare one).
            parallel=int(data.get("kv_streams") or data.get("parallel") or 1),
            kv_cache_bytes=int(data.get("kv_cache_bytes") or 0),
            kv={
                "resident": {
                    e["name"]: _kv_counters(e)
                    for e in data.get("resident", [])
                    if _valid_name(e["name"])
                },
                "disk": data.get("kv_disk"),
            },
            digests={entry["name"]: entry.get("digest") for entry in entries},
            sizes={entry["name"]: int(entry.get("size") or 0) for entry in entries},
            resident=resident,
        )
    except (KeyError, TypeError, ValueError) as err:
        logger.warning("worker sent an unreadable status (%r): %.200r", err, data)
        raise WorkerError("the worker's answer to GET /status is not a status report") from None


def _kv_counters(entry: dict) -> dict:
    keys = ("kept_prompts", "kept_bytes", "reused_tokens", "restored_tokens", "prompt_tokens")
    return {key: int(entry.get(key) or 0) for key in keys}


def _valid_name(name: object) -> bool:
    try:
        validate_model_name(name)
    except InvalidModelName:
        logger.warning("the worker reported an invalid model name %r: ignored", name)
        return False
    return True
