"""Placement over a fleet of workers: the store's ``place`` against random placement, simulated.

One command (the markdown goes to ``--out``, default the git-ignored
``benchmarks/out/PLACEMENT.md``, and to standard output)::

    uv run python benchmarks/placement.py --out benchmarks/PLACEMENT.md

Every preset of ``model_swap_lab/generate.py`` (the traces of
``benchmarks/policies.py``: 5000 requests over 40 models), every model the
size of Gemma 3 270M (Q4_K_M, 253 MB), the store's defaults on every worker
(CACHE_POLICY=lru, MAX_CACHE_SIZE=2, MAX_LOADED_MODELS=1), and 2 and 3
workers. ``locality`` is ``model_swap_lab/fleet.py`` with the store's
placement; ``random`` picks a worker uniformly at random, the median of 5
seeds. The baseline of each ratio is locality in the same run.
``--quick`` runs tiny sizes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.policies import workload  # noqa: E402
from model_swap_lab.fleet import simulate_fleet  # noqa: E402
from model_swap_lab.generate import PRESETS  # noqa: E402
from model_swap_lab.simulate import SimConfig  # noqa: E402

GEMMA_BYTES = 253_113_024  # gemma-3-270m-q4_k_m.gguf (benchmarks/ONEBOX.md)
WORKERS = (2, 3)
SEEDS = range(5)
DEFAULT_OUT = ROOT / "benchmarks" / "out" / "PLACEMENT.md"


def loads(result: dict) -> int:
    """Swaps: every load, from the store (a push first) or from the worker's disk."""
    return result["load_from_store"] + result["load_from_local_store"]


def compare(preset: str, workers: int, quick: bool) -> dict:
    _, sizes, trace = workload(preset, quick)
    sizes = dict.fromkeys(sizes, GEMMA_BYTES)
    config = SimConfig("lru")  # the store's defaults
    locality = simulate_fleet(trace, sizes, config, workers=workers)
    randoms = [
        simulate_fleet(trace, sizes, config, workers=workers, placement="random", seed=seed)
        for seed in SEEDS
    ]
    return {
        "locality": (loads(locality), locality["bytes_pushed"]),
        "random": (
            statistics.median(loads(r) for r in randoms),
            statistics.median(r["bytes_pushed"] for r in randoms),
        ),
        "requests": len(trace),
    }


def table(presets: list[str], quick: bool, command: str) -> list[str]:
    out = [
        "# Placement over a fleet: locality against random",
        "",
        f"Made by `{command}`. Simulated (model_swap_lab/fleet.py): every model "
        f"{GEMMA_BYTES / 1e6:.0f} MB (Gemma 3 270M Q4_K_M); each worker CACHE_POLICY=lru, "
        "MAX_CACHE_SIZE=2, MAX_LOADED_MODELS=1; one client. Loads: swaps (from the store or "
        f"the worker's disk); GB: bytes pushed. Random: median of {len(SEEDS)} seeds.",
        "",
        "| preset | workers | requests | locality loads | random loads | random/locality "
        "| locality GB | random GB | random/locality |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for preset in presets:
        for workers in WORKERS:
            cell = compare(preset, workers, quick)
            (l_loads, l_bytes), (r_loads, r_bytes) = cell["locality"], cell["random"]
            out.append(
                f"| {preset} | {workers} | {cell['requests']} | {l_loads} | {r_loads:g} "
                f"| {r_loads / (l_loads or 1):.2f}x | {l_bytes / 1e9:.1f} | {r_bytes / 1e9:.1f} "
                f"| {r_bytes / (l_bytes or 1):.2f}x |"
            )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (for tests)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the markdown file")
    args = parser.parse_args()
    command = "uv run python benchmarks/placement.py" + (" --quick" if args.quick else "")
    if args.out != DEFAULT_OUT:
        command += f" --out {args.out}"
    presets = ["zipf", "drift"] if args.quick else list(PRESETS)
    out = table(presets, args.quick, command)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(out) + "\n")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
