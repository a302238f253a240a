"""Swaps through the store on a GPU, and the worker's VRAM against the footprint estimate.

    python benchmarks/gpu_swaps.py MODELS_DIR MODEL     # run by benchmarks/gpu_check.sh

Prints a markdown report: cold swap (the store pushes the file, the worker
loads it), warm swap (loaded from the worker's disk cache) and hit TTFB
(``/user_request``, max_tokens 1), each the median of ``--repeats``, against
bare llama-cpp-python loading the file and sampling one token in this
process (``n_gpu_layers=-1``); then the GPU memory the worker process uses
(``nvidia-smi --query-compute-apps``) with the model resident, against its
``estimated_bytes``. UNVERIFIED on a GPU (written where none was available).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Services, bare_load_first_token, median, serving_pid  # noqa: E402

OTHER = "gpu-other.gguf"


def vram_mib(pid: int) -> float | None:
    """GPU memory (MiB) ``pid`` uses, as nvidia-smi reports it; None if it is not listed
    or there is no nvidia-smi (``gpu_check.sh run --cpu``)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except FileNotFoundError:
        return None
    for line in out.splitlines():
        listed, _, used = line.partition(",")
        if listed.strip() == str(pid):
            return float(used)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", type=Path)
    parser.add_argument("model")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    other = args.models / OTHER
    if not other.exists():
        os.link(args.models / args.model, other)  # the same weights under a second name
    bare = [bare_load_first_token(args.models / args.model) for _ in range(args.repeats)]
    cold, warm, hit = [], [], []
    with tempfile.TemporaryDirectory(prefix="model-swap-gpu-") as name:
        services = Services(Path(name), args.models, MAX_LOADED_MODELS="1")
        try:
            for _ in range(args.repeats):
                services.reset()
                cold.append(services.ask(args.model, "load_from_store")[0])
                services.ask(OTHER, "load_from_store")
                warm.append(services.ask(args.model, "load_from_local_store")[0])
                hit.append(services.ask(args.model, "already_loaded")[0])
            used = vram_mib(serving_pid(services.worker.pid))
            estimated = services.worker_status()["resident"][0]["estimated_bytes"] / 2**20
        finally:
            services.stop()
    b = median(bare) * 1000
    print(f"## Swaps on the GPU: {args.model}, median of {args.repeats}\n")
    print("| case | model-swap TTFB | bare llama-cpp-python load + first token | ratio |")
    print("|---|---|---|---|")
    for case, values in (("cold swap", cold), ("warm swap", warm), ("hit", hit)):
        o = median(values) * 1000
        print(f"| {case} | {o:.1f} ms | {b:.1f} ms | {o / b:.2f}x |")
    print("\n## Worker VRAM with the model resident\n")
    shown = "not listed by nvidia-smi" if used is None else f"{used:.0f} MiB"
    print(f"nvidia-smi: {shown}; footprint estimate (estimated_bytes): {estimated:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
