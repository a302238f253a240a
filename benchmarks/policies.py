"""Compare every cache policy, and the offline optimum, on generated traces.

One command (results to standard output; ``--out FILE`` also writes the
markdown there, with its plots beside it)::

    uv run python benchmarks/policies.py \
        --out benchmarks/POLICIES.md

1. Calibration against live servers (``policies_calibration.py``): a worker and a store (separate
   processes, CACHE_POLICY=lru, MAX_CACHE_SIZE=2) in front of copies of
   Gemma 3 270M (``--quick``: tiny models). A first trace calibrates the
   cost model (the rates the store learned, from ``/status``'s
   ``explain.cost_model``: the defaults in ``model_store_server/policies/cost_model.py``
   come from this section); a second trace (another seed) is replayed with
   one client and simulated with the default cost model and with the learned
   rates, and the action counts and swap seconds are compared.
2. Simulation sweeps over every preset of ``model_swap_lab/generate.py``
   (drift included): count budgets (MAX_CACHE_SIZE) and byte budgets of 10,
   25 and 50% of all models' bytes, for every policy and ``belady``.
3. gdsf-aged's half-life sweep (the FREQ_HALF_LIFE default comes from it).
4. The targets: adaptive against the best single policy in every cell,
   adaptive's bytes against lru's on stationary skewed traffic, gdsf-aged
   against lru on the drift presets; each policy's worst ratio to the best.
5. Predictive prewarm (``policies_prewarm.py``): every policy with PREWARM=off and
   histogram on every preset under memory budgets of 10, 30 and 50%, with the
   issue's targets (timer presets: cold starts and loads against the best
   reactive policy; the others: no harm).

``--quick`` runs tiny sizes; ``--no-live`` skips section 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.policies_calibration import live_agreement  # noqa: E402
from benchmarks.policies_prewarm import section as prewarm_section  # noqa: E402
from model_store_server.policies import POLICIES  # noqa: E402
from model_swap_lab.generate import (  # noqa: E402
    PRESETS,
    assign_sizes,
    generate,
    model_names,
    spec_for,
)
from model_swap_lab.simulate import OFFLINE, SimConfig, simulate  # noqa: E402

GIB = 1024**3
POLICY_ORDER = [*POLICIES, OFFLINE]
# The single policies adaptive is held against: no-evict answers 503 instead of swapping,
# so its swap seconds cover only what it served; adaptive itself and Belady (offline) aside.
SINGLE = [name for name in POLICIES if name not in ("no-evict", "adaptive")]
# Under a count budget ttl has no bound at all (it is not a count-bounded policy).
SINGLE_COUNTED = [name for name in SINGLE if name != "ttl"]
SHARES = (0.1, 0.25, 0.5)
# The disk tier's own cost: with MAX_LOADED_MODELS=1 every change of model costs a load
# whatever the disk keeps, and at Gemma's load rate those loads dominate swap seconds, so the
# policies are compared on bytes pushed (swap seconds shown beside).
METRIC = "bytes_pushed"
STATIONARY_SKEWED = ("zipf", "skewed", "alibaba")
DRIFTING = ("bursty", "drift", "drift-heavy")
HALF_LIVES = (15, 30, 45, 60, 120, 300, 600)


# -- 2. simulation sweeps ---------------------------------------------------------------------


def workload(preset: str, quick: bool):
    if PRESETS[preset].timer_fraction and not quick:  # timers: the preset's own fleet and day
        spec = spec_for(preset)
    else:
        spec = spec_for(preset, requests=600 if quick else 5000, models=20 if quick else 40)
    names = model_names(spec.models)
    sizes = assign_sizes(names, spec)
    return spec, sizes, generate(spec, names)


def sweep(preset: str, quick: bool) -> dict:
    spec, sizes, trace = workload(preset, quick)
    total = sum(sizes.values())
    counts = [2, 8] if quick else [2, 4, 8, 16]
    results: dict = {"count": {}, "bytes": {}}
    for policy in POLICY_ORDER:
        for n in counts:
            results["count"][policy, n] = simulate(trace, sizes, SimConfig(policy, n))
        for share in SHARES:
            config = SimConfig(
                policy, max_cache_size=spec.models, max_cache_bytes=int(total * share)
            )
            results["bytes"][policy, share] = simulate(trace, sizes, config)
    results.update(counts=counts, total=total)
    return results


def half_life_sweep(presets: list[str], quick: bool, out: list[str]) -> None:
    """gdsf-aged at each half-life against lru, per preset: the worst and the best ratio
    of bytes pushed over the byte budgets."""
    half_lives = HALF_LIVES[1:4] if quick else HALF_LIVES
    out += [
        "## 3. gdsf-aged's half-life (FREQ_HALF_LIFE)",
        "",
        "Bytes pushed by gdsf-aged relative to lru's (and gdsf's, for reference), "
        "worst / best over the byte budgets "
        + ", ".join(f"{s:.0%}" for s in SHARES)
        + ". The traces run at 2 requests/s, so a half-life of 60 s is 120 requests.",
        "",
        "| preset | gdsf | " + " | ".join(f"{h} s" for h in half_lives) + " |",
        "|---|---|" + "---|" * len(half_lives),
    ]
    for preset in presets:
        spec, sizes, trace = workload(preset, quick)
        total = sum(sizes.values())
        cells: dict = {}
        for share in SHARES:
            bound = dict(max_cache_size=spec.models, max_cache_bytes=int(total * share))
            lru = simulate(trace, sizes, SimConfig("lru", **bound))[METRIC] or 1
            gdsf = simulate(trace, sizes, SimConfig("gdsf", **bound))[METRIC]
            cells.setdefault("gdsf", []).append(gdsf / lru)
            for half_life in half_lives:
                config = SimConfig("gdsf-aged", freq_half_life=half_life, **bound)
                cells.setdefault(half_life, []).append(simulate(trace, sizes, config)[METRIC] / lru)

        def cell(ratios):
            return f"{(max(ratios) - 1) * 100:+.1f}% / {(min(ratios) - 1) * 100:+.1f}%"

        out.append(
            f"| {preset} | {cell(cells['gdsf'])} | "
            + " | ".join(cell(cells[h]) for h in half_lives)
            + " |"
        )
    out.append("")


def plot(all_results: dict, kind: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    presets = list(all_results)
    metrics = (("bytes_pushed", "GiB pushed", GIB), ("swap_seconds", "swap seconds", 1),
               ("cached_hit_ratio", "cached-hit ratio (no push)", 1))  # fmt: skip
    fig, axes = plt.subplots(len(presets), 3, figsize=(15, 3.6 * len(presets)), squeeze=False)
    for row, preset in enumerate(presets):
        results = all_results[preset]
        xs = results["counts"] if kind == "count" else list(SHARES)
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
    fig.savefig(path, dpi=70)
    plt.close(fig)


def tables(all_results: dict, out: list[str]) -> None:
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
        "## 2b. Byte budgets: GiB pushed / modelled swap seconds / cached-hit ratio (no push)",
        "",
        "MAX_CACHE_BYTES as a share of all models' bytes (no count bound); MAX_LOADED_MODELS=1. "
        "Under bytes `belady` is the offline *reference* (furthest next use), not a bound.",
        "",
    ]
    for preset, results in all_results.items():
        out += [f"**{preset}** (all models: {results['total'] / GIB:.0f} GiB)", "",
                "| policy | " + " | ".join(f"{s:.0%}" for s in SHARES) + " |",
                "|---|" + "---|" * len(SHARES)]  # fmt: skip
        for policy in POLICY_ORDER:
            cells = []
            for share in SHARES:
                r = results["bytes"][policy, share]
                pushed = r["bytes_pushed"] / GIB
                hits = r["cached_hit_ratio"]
                cells.append(f"{pushed:.0f} / {r['swap_seconds']:.0f} / {hits:.2f}")
            out.append(f"| {policy} | " + " | ".join(cells) + " |")
        out.append("")


def _cells(all_results: dict):
    """Every (preset, budget label, results of that cell by policy)."""
    for preset, results in all_results.items():
        for n in results["counts"]:
            yield preset, f"{n} models", {p: results["count"][p, n] for p in POLICY_ORDER}
        for share in SHARES:
            yield (
                preset,
                f"{share:.0%} bytes",
                {p: results["bytes"][p, share] for p in POLICY_ORDER},
            )


def _leader(result: dict) -> str:
    experts = result.get("experts", {})
    return f"{experts.get('leader', '?')} ({experts.get('switches', 0)} switches)"


def targets(all_results: dict, out: list[str]) -> dict:
    def pct(value: float) -> str:
        return f"{(value - 1) * 100:+.1f}%"

    def ratio(cell, policy, against, key=METRIC):
        return cell[policy][key] / (cell[against][key] or 1e-9)

    out += [
        "## 4. Targets",
        "",
        "**adaptive against the best single policy** (" + ", ".join(SINGLE) + ") in every "
        "byte-budget cell: bytes pushed against the single policy that pushed fewest, and "
        "modelled swap seconds against the one with the fewest. Target: within +3% (bytes).",
        "",
        "| preset | budget | fewest bytes (GiB) | adaptive vs it, bytes "
        "| adaptive vs least swap s | adaptive vs lru, bytes | adaptive's leader at the end |",
        "|---|---|---|---|---|---|---|",
    ]
    summary = {"adaptive_worst": (0.0, ""), "adaptive_lru_bytes": {}, "aged_vs_lru": (0.0, "")}
    for preset, label, cell in _cells(all_results):
        if "bytes" not in label:
            continue
        best = min(SINGLE, key=lambda p: cell[p][METRIC])
        fastest = min(SINGLE, key=lambda p: cell[p]["swap_seconds"])
        vs_best = ratio(cell, "adaptive", best)
        vs_lru = ratio(cell, "adaptive", "lru")
        if vs_best > summary["adaptive_worst"][0]:
            summary["adaptive_worst"] = (vs_best, f"{preset}, {label}")
        if preset in STATIONARY_SKEWED:
            summary["adaptive_lru_bytes"][preset, label] = vs_lru
        out.append(
            f"| {preset} | {label} | {best} ({cell[best][METRIC] / GIB:.0f}) | {pct(vs_best)} "
            f"| {pct(ratio(cell, 'adaptive', fastest, 'swap_seconds'))} | {pct(vs_lru)} "
            f"| {_leader(cell['adaptive'])} |"
        )
    worst, where = summary["adaptive_worst"]
    out += [
        "",
        f"Worst: adaptive {pct(worst)} bytes against the best single policy ({where}).",
        "",
        "**adaptive's bytes against lru's on stationary skewed traffic** ("
        + ", ".join(STATIONARY_SKEWED)
        + "); target at least 20% fewer: "
        + "; ".join(
            f"{preset} {label}: {pct(value)}"
            for (preset, label), value in summary["adaptive_lru_bytes"].items()
        )
        + ".",
        "",
        "**gdsf-aged against lru on the drifting presets** (" + ", ".join(DRIFTING) + "); "
        "target no more than +3% bytes:",
        "",
        "| preset | budget | gdsf vs lru bytes | gdsf-aged vs lru bytes "
        "| gdsf vs lru swap s | gdsf-aged vs lru swap s |",
        "|---|---|---|---|---|---|",
    ]
    for preset, label, cell in _cells(all_results):
        if preset not in DRIFTING or "bytes" not in label:
            continue
        aged = ratio(cell, "gdsf-aged", "lru")
        if aged > summary["aged_vs_lru"][0]:
            summary["aged_vs_lru"] = (aged, f"{preset}, {label}")
        out.append(
            f"| {preset} | {label} | {pct(ratio(cell, 'gdsf', 'lru'))} | {pct(aged)} "
            f"| {pct(ratio(cell, 'gdsf', 'lru', 'swap_seconds'))} "
            f"| {pct(ratio(cell, 'gdsf-aged', 'lru', 'swap_seconds'))} |"
        )
    out += [
        "",
        "**Each policy's worst ratio to the best single policy** over every preset and "
        "budget above, count and bytes (under count budgets ttl, which has no count bound, is "
        "left out of the best); bytes pushed and, beside, modelled swap seconds. no-evict's "
        "figures count only the requests it served (it rejects the rest):",
        "",
        "| policy | worst bytes vs best | where | median | worst swap s vs best | where |",
        "|---|---|---|---|---|---|",
    ]
    for policy in POLICIES:
        rows = {METRIC: [], "swap_seconds": []}
        for preset, label, cell in _cells(all_results):
            single = SINGLE if "bytes" in label else SINGLE_COUNTED
            for key, values in rows.items():
                best = min(cell[p][key] for p in single) or 1e-9
                values.append((cell[policy][key] / best, f"{preset}, {label}"))
        worst_bytes, where_bytes = max(rows[METRIC])
        middle = sorted(r for r, _ in rows[METRIC])[len(rows[METRIC]) // 2]
        worst_swap, where_swap = max(rows["swap_seconds"])
        out.append(
            f"| {policy} | {pct(worst_bytes)} | {where_bytes} | {pct(middle)} "
            f"| {pct(worst_swap)} | {where_swap} |"
        )
    out.append("")
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (for tests)")
    parser.add_argument("--no-live", action="store_true", help="skip the live calibration")
    parser.add_argument(
        "--out", type=Path, help="also write the markdown here, and its plots beside it"
    )
    args = parser.parse_args()
    command = "uv run python benchmarks/policies.py" + (" --quick" if args.quick else "")
    out = [
        "# Cache policies on generated traces",
        "",
        f"Made by `{command}`; cost model: model_store_server/policies/cost_model.py defaults "
        "unless said otherwise; FREQ_HALF_LIFE at its default.",
        "",
    ]
    if not args.no_live:
        live = live_agreement(out, args.quick)
        print(
            f"live: counts identical={live['same_counts']} sim/live swap={live['swap_ratio']:.2f}",
            file=sys.stderr,
        )
    presets = ["zipf", "drift", "periodic"] if args.quick else list(PRESETS)
    all_results = {preset: sweep(preset, args.quick) for preset in presets}
    tables(all_results, out)
    half_life_sweep(presets, args.quick, out)
    targets(all_results, out)
    prewarm_section({p: workload(p, args.quick)[1:] for p in presets}, out)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        for kind in ("count", "bytes"):
            plot(all_results, kind, args.out.parent / f"policies-{kind}.png")
        out += ["![count budgets](policies-count.png)", "", "![byte budgets](policies-bytes.png)"]
        args.out.write_text("\n".join(out) + "\n")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
