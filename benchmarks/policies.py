"""Compare every cache policy, and the offline optimum, on generated traces.

One command::

    uv run python benchmarks/policies.py

1. Replay against live servers: a worker and a store (separate processes,
   CACHE_POLICY=lru, MAX_CACHE_SIZE=2) in front of tiny models of 8-64 MiB.
   A first trace calibrates the cost model (the rates the store learned,
   from ``/status``'s ``explain.cost_model``: these are the defaults in
   ``model_store_server/cost_model.py``); a second trace (another seed) is
   replayed with one client and simulated with the default cost model, and
   the action counts and swap seconds are compared.
2. Simulation sweeps over the presets of ``model_swap_lab/generate.py``: for
   count budgets (MAX_CACHE_SIZE) and byte budgets (MAX_CACHE_BYTES as a
   share of all models' bytes), bytes pushed, modelled swap seconds and hit
   ratio of every policy and of ``belady``; misses as a ratio to Belady's.
3. The issue's targets: gdsf against lru with a byte budget about the hot set
   (the models that take 80% of the requests), and the worst ratio of each
   policy to lru on every preset.

Writes ``POLICIES.md`` and ``policies-count.png`` / ``policies-bytes.png``
into ``--out-dir`` (default ``benchmarks/``). ``--quick`` runs tiny sizes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from benchmarks.harness import Services  # noqa: E402
from model_store_server.cache_policy import POLICIES  # noqa: E402
from model_store_server.cost_model import CostModel  # noqa: E402
from model_swap.tiny_models import write_tiny_model  # noqa: E402
from model_swap_lab.generate import (  # noqa: E402
    PRESETS,
    assign_sizes,
    generate,
    model_names,
    spec_for,
)
from model_swap_lab.replay import replay  # noqa: E402
from model_swap_lab.simulate import OFFLINE, SimConfig, footprints_from_dir, simulate  # noqa: E402
from model_swap_lab.trace import sizes_from_dir  # noqa: E402

GIB = 1024**3
POLICY_ORDER = [*POLICIES, OFFLINE]
COUNT_KEYS = ("already_loaded", "load_from_local_store", "load_from_store", "rejected", "evicted")


# -- 1. replay against live servers -------------------------------------------------------------


def live_agreement(out: list[str], quick: bool) -> dict:
    sizes_mb = [8, 8, 16, 16, 32, 64] if not quick else [2, 4]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = tmp / "models"
        models.mkdir()
        for index, size_mb in enumerate(sizes_mb):
            write_tiny_model(models / f"lab-{index}.gguf", size_mb=size_mb)
        sizes = sizes_from_dir(models)
        names = list(sizes)
        footprints = footprints_from_dir(models, names)
        requests_n = 30 if quick else 150
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
    learned_cost = CostModel(
        push_bytes_per_s=learned["push_bytes_per_s"],
        load_bytes_per_s=learned["load_bytes_per_s"],
        push_overhead_s=learned["push_overhead_s"],
        load_overhead_s=learned["load_overhead_s"],
        call_overhead_s=learned["call_overhead_s"],
    )
    refit = simulate(trace, sizes, config, cost=learned_cost, footprints=footprints)
    same = all(live[k] == simulated[k] for k in COUNT_KEYS)
    ratio = simulated["swap_seconds"] / live["swap_seconds"] if live["swap_seconds"] else 0.0
    out += [
        "## 1. Replay against live servers vs the simulator",
        "",
        f"Trace: preset zipf, {requests_n} requests over {len(names)} tiny models of "
        f"{sizes_mb} MiB, replayed with one client as fast as answered (`--speed 0`), "
        "CACHE_POLICY=lru, MAX_CACHE_SIZE=2.",
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
        f"{refit['swap_seconds'] / live['swap_seconds']:.2f} with the learned rates. "
        f"Live hit TTFB (the baseline subtracted from each swap): {live['hit_ttfb_ms']:.1f} ms.",
        "",
        "Rates the store learned (calibration trace): "
        + ", ".join(f"{k}={v:.4g}" for k, v in learned.items()),
        "",
    ]
    return {"same_counts": same, "swap_ratio": ratio, "learned": learned}


# -- 2. simulation sweeps ---------------------------------------------------------------------


def hot_set_bytes(trace, sizes, share: float = 0.8) -> int:
    counts = Counter(r.model for r in trace)
    total, covered, nbytes = sum(counts.values()), 0, 0
    for model, count in counts.most_common():
        if covered >= share * total:
            break
        covered += count
        nbytes += sizes[model]
    return nbytes


def sweep(preset: str, quick: bool) -> dict:
    spec = spec_for(preset, requests=600 if quick else 5000, models=20 if quick else 40)
    names = model_names(spec.models)
    sizes = assign_sizes(names, spec)
    trace = generate(spec, names)
    total = sum(sizes.values())
    counts = [2, 4, 8] if quick else [2, 4, 6, 8, 12, 16]
    # From 10%: below it, the largest models (7.5 GiB) exceed the budget and are refused.
    shares = [0.1, 0.3] if quick else [0.1, 0.15, 0.2, 0.3, 0.5]
    results: dict = {"count": {}, "bytes": {}, "hot": {}}
    for policy in POLICY_ORDER:
        for n in counts:
            results["count"][policy, n] = simulate(trace, sizes, SimConfig(policy, n))
        for share in shares:
            config = SimConfig(
                policy, max_cache_size=spec.models, max_cache_bytes=int(total * share)
            )
            results["bytes"][policy, share] = simulate(trace, sizes, config)
    hot = hot_set_bytes(trace, sizes)
    for policy in POLICY_ORDER:
        config = SimConfig(policy, max_cache_size=spec.models, max_cache_bytes=hot)
        results["hot"][policy] = simulate(trace, sizes, config)
    results.update(counts=counts, shares=shares, total=total, hot_bytes=hot, spec=spec)
    return results


def plot(all_results: dict, kind: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    presets = list(all_results)
    metrics = (("bytes_pushed", "GiB pushed", GIB), ("swap_seconds", "swap seconds", 1),
               ("hit_ratio", "hit ratio", 1))  # fmt: skip
    fig, axes = plt.subplots(len(presets), 3, figsize=(15, 3.6 * len(presets)), squeeze=False)
    for row, preset in enumerate(presets):
        results = all_results[preset]
        xs = results["counts"] if kind == "count" else results["shares"]
        for col, (key, label, scale) in enumerate(metrics):
            ax = axes[row][col]
            for policy in POLICY_ORDER:
                ys = [results[kind][policy, x][key] / scale for x in xs]
                style = "k--" if policy == OFFLINE else "-o"
                ax.plot(xs, ys, style, label=policy, markersize=3)
            ax.set_title(f"{preset}: {label}")
            ax.set_xlabel("MAX_CACHE_SIZE" if kind == "count" else "MAX_CACHE_BYTES / all models")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def tables(all_results: dict, out: list[str]) -> dict:
    worst: dict[str, tuple[float, str]] = {}
    out += [
        "## 2. Count budgets: misses (pushes) as a ratio to Belady's",
        "",
        "MAX_LOADED_MODELS=1; each cell is `misses (x Belady)`.",
        "",
    ]
    for preset, results in all_results.items():
        counts = results["counts"]
        out += [f"**{preset}**", "", "| policy | " + " | ".join(f"{n} models" for n in counts)
                + " |", "|---|" + "---|" * len(counts)]  # fmt: skip
        for policy in POLICY_ORDER:
            cells = []
            for n in counts:
                misses = results["count"][policy, n]["misses"]
                bound = results["count"][OFFLINE, n]["misses"] or 1
                rejected = results["count"][policy, n]["rejected"]
                cell = f"{misses} ({misses / bound:.2f}x)"
                cells.append(cell + (f", {rejected} rejected" if rejected else ""))
            out.append(f"| {policy} | " + " | ".join(cells) + " |")
        out.append("")
    out += [
        "## 3. Byte budgets: GiB pushed / modelled swap seconds / hit ratio",
        "",
        "MAX_CACHE_BYTES as a share of all models' bytes (no count bound); MAX_LOADED_MODELS=1. "
        "Under bytes `belady` is the offline *reference* (furthest next use), not a bound.",
        "",
    ]
    for preset, results in all_results.items():
        shares = results["shares"]
        out += [f"**{preset}** (all models: {results['total'] / GIB:.0f} GiB)", "",
                "| policy | " + " | ".join(f"{s:.0%}" for s in shares) + " |",
                "|---|" + "---|" * len(shares)]  # fmt: skip
        for policy in POLICY_ORDER:
            cells = []
            for share in shares:
                r = results["bytes"][policy, share]
                pushed = r["bytes_pushed"] / GIB
                cells.append(f"{pushed:.0f} / {r['swap_seconds']:.0f} / {r['hit_ratio']:.2f}")
            out.append(f"| {policy} | " + " | ".join(cells) + " |")
        out.append("")
        for policy in POLICIES:
            for kind, xs in (("count", results["counts"]), ("bytes", results["shares"])):
                for x in xs:
                    lru = results[kind]["lru", x]["swap_seconds"] or 1e-9
                    ratio = results[kind][policy, x]["swap_seconds"] / lru
                    label = f"{preset}, {kind} budget {x if kind == 'count' else f'{x:.0%}'}"
                    if ratio > worst.get(policy, (0.0, ""))[0]:
                        worst[policy] = (ratio, label)
    return worst


def targets(all_results: dict, worst: dict, out: list[str]) -> None:
    out += [
        "## 4. Targets",
        "",
        "Byte budget = the bytes of the models that take 80% of the requests (the hot set); "
        "MAX_LOADED_MODELS=1.",
        "",
        "| preset | hot set GiB | lru GiB pushed | gdsf GiB pushed | gdsf vs lru bytes "
        "| lru swap s | gdsf swap s | gdsf vs lru swap | lfu-da vs lru swap |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for preset, results in all_results.items():
        hot = results["hot"]
        lru, gdsf, lfu = hot["lru"], hot["gdsf"], hot["lfu-da"]
        out.append(
            f"| {preset} | {results['hot_bytes'] / GIB:.1f} | {lru['bytes_pushed'] / GIB:.0f} "
            f"| {gdsf['bytes_pushed'] / GIB:.0f} "
            f"| {(gdsf['bytes_pushed'] / lru['bytes_pushed'] - 1) * 100:+.1f}% "
            f"| {lru['swap_seconds']:.0f} | {gdsf['swap_seconds']:.0f} "
            f"| {(gdsf['swap_seconds'] / lru['swap_seconds'] - 1) * 100:+.1f}% "
            f"| {(lfu['swap_seconds'] / lru['swap_seconds'] - 1) * 100:+.1f}% |"
        )
    out += [
        "",
        "Worst modelled swap seconds of each policy relative to lru, over every preset and "
        "budget above (no-evict's figure counts only the requests it served: it rejects the rest):",
        "",
        "| policy | worst vs lru | where |",
        "|---|---|---|",
    ]
    for policy, (ratio, where) in worst.items():
        out.append(f"| {policy} | {(ratio - 1) * 100:+.1f}% | {where} |")
    out.append("")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (for tests)")
    parser.add_argument("--no-live", action="store_true", help="skip the live replay")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks")
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = [
        "# Cache policies on generated traces",
        "",
        "Made by `uv run python benchmarks/policies.py`"
        + (" --quick" if args.quick else "")
        + "; cost model: model_store_server/cost_model.py defaults unless said otherwise.",
        "",
    ]
    if not args.no_live:
        live = live_agreement(out, args.quick)
        print(
            f"live: counts identical={live['same_counts']} sim/live swap={live['swap_ratio']:.2f}"
        )
    presets = ["zipf", "alibaba"] if args.quick else list(PRESETS)
    all_results = {preset: sweep(preset, args.quick) for preset in presets}
    worst = tables(all_results, out)
    targets(all_results, worst, out)
    for kind in ("count", "bytes"):
        plot(all_results, kind, args.out_dir / f"policies-{kind}.png")
    out += ["![count budgets](policies-count.png)", "", "![byte budgets](policies-bytes.png)", ""]
    (args.out_dir / "POLICIES.md").write_text("\n".join(out))
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
