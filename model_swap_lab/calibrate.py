"""What a running store knows, as the simulator's inputs: its settings and learned rates.

``/status`` shows the store's policy and budgets and, under
``explain.cost_model``, the push and load rates it has measured on its
worker. ``store_calibration`` turns them into a ``SimConfig`` and a
``CostModel``, so ``simulate --calibrate-from URL`` and ``replay`` model the
store as it runs rather than with the development machine's defaults.
"""

from __future__ import annotations

from collections.abc import Sequence

import requests as http

from model_store_server.policies.cost_model import CostModel
from model_swap_lab.simulate import SimConfig, simulate
from model_swap_lab.trace import Request

RATE_KEYS = (
    "push_bytes_per_s",
    "load_bytes_per_s",
    "push_overhead_s",
    "load_overhead_s",
    "call_overhead_s",
)


def store_status(store: str, timeout: float = 30) -> dict:
    """``GET /status`` of the store at ``store`` (a base URL)."""
    answer = http.get(f"{store.rstrip('/')}/status", timeout=timeout)
    answer.raise_for_status()
    return answer.json()


def cost_model_from(rates: dict) -> CostModel:
    """A fixed cost model with ``rates`` (``explain.cost_model``'s keys); ValueError names a
    missing or unusable one."""
    missing = [key for key in RATE_KEYS if not isinstance(rates.get(key), int | float)]
    if missing:
        raise ValueError(f"the store's cost model lacks {', '.join(missing)}")
    return CostModel(**{key: float(rates[key]) for key in RATE_KEYS})


def store_calibration(status: dict) -> tuple[SimConfig, CostModel]:
    """The simulator's config (the store's policy and budgets) and cost model (the rates it
    learned) from a ``/status`` object."""
    try:
        budgets = status["budgets"]
        config = SimConfig(
            policy=status["policy"],
            max_cache_size=status["max_cache_size"],
            max_cache_bytes=budgets["cache"]["max_bytes"] or 0,
            max_loaded_models=budgets["resident"]["max_models"],
            max_loaded_bytes=budgets["resident"]["max_bytes"] or 0,
            ttl_seconds=status["ttl_seconds"],
            **_prewarm(status["explain"].get("prewarm")),
        )
        rates = status["explain"]["cost_model"]
    except (KeyError, TypeError) as err:
        raise ValueError(f"not a model-swap store's /status (no {err})") from None
    return config, cost_model_from(rates)


def _prewarm(explained: dict | None) -> dict:
    """SimConfig's prewarm fields from ``/status``'s ``explain.prewarm`` (absent: off)."""
    if not explained:
        return {}
    return {
        "prewarm": explained["mode"],
        "prewarm_margin": float(explained["margin_s"]),
        "prewarm_bin_seconds": float(explained["bin_seconds"]),
    }


def simulated_vs_live(
    trace: Sequence[Request], sizes: dict[str, int], live: dict, status: dict
) -> dict:
    """The simulator's swap seconds for ``trace`` under the store's settings and learned
    rates (its prewarm included), beside the ``live`` replay's: ``simulated_swap_seconds``,
    ``simulated_over_live`` (1.0: exact), ``simulated_actions_match``,
    ``simulated_cold_starts`` and ``simulated_prewarm_loads``."""
    config, cost = store_calibration(status)
    simulated = simulate(trace, sizes, config, cost=cost)
    ratio = simulated["swap_seconds"] / live["swap_seconds"] if live["swap_seconds"] else None
    keys = ("already_loaded", "load_from_local_store", "load_from_store", "rejected")
    return {
        "simulated_swap_seconds": simulated["swap_seconds"],
        "simulated_over_live": round(ratio, 3) if ratio is not None else None,
        "simulated_actions_match": all(simulated[k] == live[k] for k in keys),
        "simulated_cold_starts": simulated["cold_starts"],
        "simulated_prewarm_loads": simulated["prewarm_loads"],
    }
