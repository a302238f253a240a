"""Section 5 of ``benchmarks/policies.py``: predictive prewarm (PREWARM=histogram) against the
reactive policies, on every preset and memory budget, simulated.

Budgets: MAX_LOADED_BYTES of 10, 30 and 50% of all models' bytes (no count bound on
either tier), MAX_CACHE_BYTES twice that (at most all). Every policy with PREWARM=off and
PREWARM=histogram (PREWARM_MARGIN and PREWARM_BIN_SECONDS at their defaults). Targets
(issue 33): on the timer presets at 30% memory, cold starts at most 0.5x the best reactive
policy's with total loads (prewarm included) at most 1.3x that policy's; on the presets
without timers (zipf, drift, bursty, and the others) never more than 1.02x the cold starts
and 1.05x the bytes pushed of the same policy without prewarm.
"""

from __future__ import annotations

from model_store_server.config import DEFAULTS
from model_store_server.policies import POLICIES
from model_swap_lab.simulate import SimConfig, simulate

GIB = 1024**3
MEMORY_SHARES = (0.1, 0.3, 0.5)
TIMED = ("periodic", "diurnal")
# no-evict answers 503 instead of swapping: its cold starts include what it refused.
REACTIVE = [name for name in POLICIES if name != "no-evict"]


def config(policy: str, sizes: dict, share: float, prewarm: str) -> SimConfig:
    total = sum(sizes.values())
    return SimConfig(
        policy,
        max_cache_size=len(sizes),
        max_cache_bytes=int(total * min(1.0, 2 * share)),
        max_loaded_models=len(sizes),
        max_loaded_bytes=int(total * share),
        prewarm=prewarm,
    )


def sweep(workloads: dict) -> dict:
    """{(preset, share, policy, prewarm): result} over ``workloads`` {preset: (sizes, trace)}."""
    results = {}
    for preset, (sizes, trace) in workloads.items():
        for share in MEMORY_SHARES:
            for policy in REACTIVE:
                for prewarm in ("off", "histogram"):
                    results[preset, share, policy, prewarm] = simulate(
                        trace, sizes, config(policy, sizes, share, prewarm)
                    )
    return results


def section(workloads: dict, out: list[str]) -> dict:
    """Append the prewarm tables and targets to ``out``; returns the target summary."""
    results = sweep(workloads)
    presets = list(workloads)
    out += [
        "## 5. Predictive prewarm (PREWARM=histogram)",
        "",
        "MAX_LOADED_BYTES as a share of all models' bytes, MAX_CACHE_BYTES twice that (at most "
        "all), no count bounds; PREWARM_MARGIN="
        f"{DEFAULTS['PREWARM_MARGIN']:g} s, PREWARM_BIN_SECONDS="
        f"{DEFAULTS['PREWARM_BIN_SECONDS']:g} s. A cold start is a request whose model was not "
        "resident on arrival; loads count every load and push, prewarm included; wasted: "
        "prewarmed, then unloaded or evicted before any request used it; memory: GiB-hours "
        "held resident. Simulated (no timing depends on this machine).",
        "",
    ]
    summary = {"timed": [], "untimed_worst_cold": (0.0, ""), "untimed_worst_bytes": (0.0, "")}
    for preset in presets:
        requests = results[preset, MEMORY_SHARES[0], REACTIVE[0], "off"]["requests"]
        out += [
            f"**{preset}** ({requests} requests): cold starts off -> on (x), loads off -> on "
            "(prewarm loads, wasted), GiB pushed off -> on, memory GiB-h off -> on",
            "",
            "| policy | " + " | ".join(f"{s:.0%} memory" for s in MEMORY_SHARES) + " |",
            "|---|" + "---|" * len(MEMORY_SHARES),
        ]
        for policy in REACTIVE:
            cells = []
            for share in MEMORY_SHARES:
                off = results[preset, share, policy, "off"]
                on = results[preset, share, policy, "histogram"]
                ratio = on["cold_starts"] / (off["cold_starts"] or 1)
                cells.append(
                    f"{off['cold_starts']} -> {on['cold_starts']} ({ratio:.2f}x); "
                    f"{off['loads']} -> {on['loads']} ({on['prewarm_loads']}, "
                    f"{on['prewarm_wasted']}); {off['bytes_pushed'] / GIB:.0f} -> "
                    f"{on['bytes_pushed'] / GIB:.0f}; "
                    f"{off['memory_byte_seconds'] / GIB / 3600:.0f} -> "
                    f"{on['memory_byte_seconds'] / GIB / 3600:.0f}"
                )
                if preset not in TIMED:
                    bytes_ratio = on["bytes_pushed"] / (off["bytes_pushed"] or 1)
                    where = f"{preset}, {share:.0%}, {policy}"
                    if ratio > summary["untimed_worst_cold"][0]:
                        summary["untimed_worst_cold"] = (ratio, where)
                    if bytes_ratio > summary["untimed_worst_bytes"][0]:
                        summary["untimed_worst_bytes"] = (bytes_ratio, where)
            out.append(f"| {policy} | " + " | ".join(cells) + " |")
        out.append("")
    out += [
        "**Targets on the timer presets at 30% memory**: each policy with prewarm against the "
        "best reactive policy (fewest cold starts without prewarm); cold starts <= 0.5x and "
        "loads <= 1.3x.",
        "",
        "| preset | best reactive (cold, loads) | policy + prewarm | cold x | loads x | met |",
        "|---|---|---|---|---|---|",
    ]
    for preset in [p for p in presets if p in TIMED]:
        best = min(REACTIVE, key=lambda p: results[preset, 0.3, p, "off"]["cold_starts"])
        reference = results[preset, 0.3, best, "off"]
        for policy in REACTIVE:
            on = results[preset, 0.3, policy, "histogram"]
            cold = on["cold_starts"] / (reference["cold_starts"] or 1)
            loads = on["loads"] / (reference["loads"] or 1)
            met = cold <= 0.5 and loads <= 1.3
            summary["timed"].append((preset, policy, cold, loads, met))
            out.append(
                f"| {preset} | {best} ({reference['cold_starts']}, {reference['loads']}) "
                f"| {policy} | {cold:.2f} | {loads:.2f} | {'yes' if met else 'no'} |"
            )
    untimed = ", ".join(p for p in presets if p not in TIMED)
    cold, where_cold = summary["untimed_worst_cold"]
    pushed, where_bytes = summary["untimed_worst_bytes"]
    out += [
        "",
        f"**Targets on the presets without timers** ({untimed}), every policy and budget: "
        f"worst cold starts with prewarm {cold:.3f}x the same "
        f"policy's without ({where_cold}; target <= 1.02x), worst bytes pushed {pushed:.3f}x "
        f"({where_bytes}; target <= 1.05x).",
        "",
    ]
    return summary
