"""The performance suite: every figure against a baseline measured in the same run.

    uv run python benchmarks/suite.py              # full run, about 12 minutes here
    uv run python benchmarks/suite.py --quick      # tiny sizes, one repeat (what the tests run)
    uv run python benchmarks/suite.py --only push --push-sizes 512 1024
                                                   # section 1 alone, rewritten in RESULTS.md

Writes ``RESULTS.md`` (tables: median, baseline, ratio, target) and
``results.png`` into the git-ignored ``benchmarks/out/``; ``--out-dir benchmarks``
regenerates the committed ones. Sections:

1. push throughput store -> worker over HTTP vs a raw loopback ``sendfile``;
2. swap latency (cold / warm / hit TTFB, max_tokens=1) for Gemma 3 270M and a
   tiny model vs bare llama-cpp-python load + first token, and the hit vs the
   worker's own /infer;
3. against a peer: llama-cpp-python's server in multi-model mode, same models;
4. streaming tokens/s through the store vs bare llama-cpp-python (Gemma);
5. peak RSS growth of the worker and of the sender during the largest push;
6. concurrency (1/4/16 clients on hits), push time vs size, ``decision_ms``
   with 10,000 models in MODELS_DIR and a 1,000-entry cache, store start-up
   with 10,000 (sparse, 1 GiB each) model files;
7. the OpenAI API's hit latency against ``/user_request`` and against
   llama-cpp-python's own ``/v1/chat/completions`` (``benchmarks/openai_path.py``);
8. three models alternating with ``MAX_LOADED_MODELS=3`` against ``=1``, and the
   worker's RSS with 1, 2 and 3 resident against the footprint estimate
   (``benchmarks/residency.py``);
9. the scheduler: a concurrent burst over three models with one resident place
   against ``SCHEDULER_MAX_WAIT=0`` and llama-server's router mode, a thrash soak,
   and hit latency through the store against the worker (``benchmarks/scheduler.py``).
10. slow clients: the front server against the previous gunicorn path (hit
   latency, push against a raw socket, normal requests under 2,000 slow
   connections to the store and 1,000 to the worker, memory per slow
   connection; ``benchmarks/slowloris.py``).
11. 1 / 2 / 4 / 8 concurrent streams on one model (continuous batching): aggregate
   tokens/s and TTFT against our single stream and against llama-server ``-np N``
   built from the llama.cpp llama-cpp-python vendors (11a), and steady traffic:
   staggered closed-loop clients and Poisson arrivals (11b; ``benchmarks/batching.py``).

Sections 1 and 5 are in ``suite_transfer.py``, 2 to 4 in ``suite_latency.py``,
6 in ``suite_scale.py``, the tables and the chart in ``suite_report.py``; 7 to 11
in the modules named above. This file runs them in order.

Everything runs on 127.0.0.1 and is bounded in count and time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from batching import bench_batching  # noqa: E402
from harness import (  # noqa: E402
    ROOT,
    Services,
)
from openai_path import bench_openai  # noqa: E402
from residency import bench_residency  # noqa: E402
from scheduler import bench_scheduler  # noqa: E402
from suite_latency import bench_peer, bench_streaming, bench_swaps  # noqa: E402
from suite_report import GEMMA, OTHER, Report, chart  # noqa: E402
from suite_scale import bench_concurrency, bench_decisions, bench_scale, bench_slow_clients  # noqa: E402
from suite_transfer import bench_memory, bench_push  # noqa: E402

from model_swap.tiny_models import write_tiny_model  # noqa: E402
from model_swap_cli.cli import ensure_default_model  # noqa: E402


def push_only(args) -> int:
    """Section 1 alone: measured, printed, and spliced into ``--out-dir``'s RESULTS.md."""
    report = Report()
    with tempfile.TemporaryDirectory(prefix="model-swap-bench-") as tmp_name:
        tmp = Path(tmp_name)
        models = tmp / "models"
        models.mkdir()
        write_tiny_model(models / OTHER)
        services = Services(tmp, models, CACHE_POLICY="lru", MAX_CACHE_SIZE="3")
        try:
            services.ask(OTHER, "load_from_store")  # warm both processes up
            bench_push(report, args, tmp, services)
        finally:
            services.stop()
    results = args.out_dir / "RESULTS.md"
    title, header, rows, note = report.sections[0]
    note += (
        f" Median of {args.repeats} runs, from `uv run python benchmarks/suite.py --only push "
        f"--push-sizes {' '.join(map(str, args.push_sizes))} --repeats {args.repeats}` on "
        f"{datetime.now(UTC).strftime('%Y-%m-%d')}."
    )
    section = "\n".join(
        [f"## {title}", "", note, "", "| " + " | ".join(header) + " |"]
        + ["|" + "|".join("---" for _ in header) + "|"]
        + ["| " + " | ".join(row) + " |" for row in rows]
    )
    if results.exists():
        text = results.read_text()
        start = text.index("\n## 1. ") + 1
        end = text.index("\n## ", start) + 1
        results.write_text(text[:start] + section + "\n\n" + text[end:])
        print(f"\nreplaced section 1 of {results}")
    else:  # nothing to splice into: the section on its own
        args.out_dir.mkdir(parents=True, exist_ok=True)
        results.write_text(section + "\n")
        print(f"\nwrote section 1 alone to {results}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and one repeat")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "out")
    parser.add_argument(
        "--only",
        choices=["push"],
        help="run one section and replace only that section of an existing RESULTS.md",
    )
    parser.add_argument("--push-sizes", type=int, nargs="+", metavar="MB", help="push file sizes")
    parser.add_argument("--repeats", type=int, help="runs per figure (the median is reported)")
    args = parser.parse_args()
    overrides = {"push_sizes": args.push_sizes, "repeats": args.repeats}
    if args.quick:
        args.repeats, args.push_sizes, args.tiny_mb, args.gemma = 1, [1, 2], 1, False
        args.stream_tokens, args.hits_per_level, args.many_models, args.cache_entries = (
            16,
            16,
            200,
            50,
        )
    else:
        args.repeats, args.push_sizes, args.tiny_mb, args.gemma = (
            5,
            [64, 128, 256, 512, 1024],
            100,
            True,
        )
        args.stream_tokens, args.hits_per_level, args.many_models, args.cache_entries = (
            256,
            200,
            10000,
            1000,
        )
    for key, value in overrides.items():
        if value is not None:
            setattr(args, key, value)
    if args.only == "push":
        return push_only(args)

    report = Report()
    with tempfile.TemporaryDirectory(prefix="model-swap-bench-") as tmp_name:
        tmp = Path(tmp_name)
        models = tmp / "models"
        models.mkdir()
        tiny = f"tiny-{args.tiny_mb}mb.gguf"
        write_tiny_model(models / tiny, size_mb=args.tiny_mb)
        write_tiny_model(models / OTHER)
        subjects = [tiny]
        if args.gemma:
            ensure_default_model(models)
            subjects.insert(0, GEMMA)
        services = Services(tmp, models, CACHE_POLICY="lru", MAX_CACHE_SIZE="3")
        try:
            services.ask(OTHER, "load_from_store")  # warm both processes up
            bench_push(report, args, tmp, services)
            bench_swaps(report, args, models, services, subjects)
            bench_peer(report, args, tmp, models, services, subjects)
            bench_streaming(report, args, models, services, subjects[0])
            bench_openai(report, args, tmp, models, services, subjects[0])
            bench_memory(report, args, tmp, services)
            bench_concurrency(report, args, services)
        finally:
            services.stop()
        bench_residency(report, args, tmp, models, subjects[0])
        bench_scheduler(report, args, tmp, models, subjects[0])
        bench_batching(report, args, tmp, models, subjects[0])
        bench_scale(report, args)
        bench_decisions(report, args, tmp)
    bench_slow_clients(report, args)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "RESULTS.md").write_text(report.markdown(args))
    chart(report, args.out_dir / "results.png")
    print(f"\nwrote {args.out_dir / 'RESULTS.md'} and {args.out_dir / 'results.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
