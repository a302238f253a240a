"""The scheduler: a concurrent burst over three models with one resident, against its peers.

    uv run python benchmarks/scheduler.py                 # Gemma 3 270M copies (~5 minutes)
    uv run python benchmarks/scheduler.py --quick         # tiny models, a smaller burst
    uv run python benchmarks/scheduler.py --out benchmarks/SCHEDULER.md

Also section 9 of ``benchmarks/suite.py``. Three copies of one model under three
names (``sched-a``, ``sched-b``, ``sched-c``) and ``MAX_LOADED_MODELS=1``:

- burst: ``--clients`` concurrent streamed ``/v1/completions`` (``--tokens`` each,
  the models interleaved a, b, c, a, ...), all three files already on the
  worker's disk: loads (the worker's own count), wall time, p50/p95 time to the
  first token, and whether every answer came from the model asked for. Run
  against the store with the default ``SCHEDULER_MAX_WAIT`` (2 s), with
  ``SCHEDULER_MAX_WAIT=0`` (strict arrival order, the baseline in the same run),
  and against llama.cpp's ``llama-server`` in router mode (``--models-dir`` with
  the same three files, ``--models-max 1``), both with ``--parallel`` (8) sequences at
  once of 2048 tokens each (the worker's ``PARALLEL`` and ``N_CTX``; the router's
  ``-np 8 -c 16384``; and ``-fa off``, the worker's kernels, as in batching.py),
  if its binary is found (``LLAMA_SERVER_BIN``, else .peer/bin/llama-server);
  loads there are the child servers it spawned (its log's ``spawning server
  instance`` lines).
- thrash soak: ``--soak-clients`` clients x ``--soak-requests`` requests over three
  tiny models with ``MAX_CACHE_SIZE=1`` (every swap is a push), default against
  ``SCHEDULER_MAX_WAIT=0``: pushes and p95 latency.
- hit latency: ``/user_request`` (max_tokens 1) on the resident model through the
  store against the worker's own ``/infer``: median time to the first byte.
- timelines: the default store's burst and the router's at each of
  ``--timeline-tokens`` (16 and 48), every request on one time axis: arrival, the
  swap it carried out, prefill start (from the services' JSON log lines under the
  request's ``X-Request-Id``), first and last token (as the client saw them), and
  where the wall time went (swapping, generating, neither) against the router's.
- floor: llama.cpp alone loading the file (``llama_model_load_from_file``, median
  of 5) and evaluating one model's group of prompts in one ``llama_decode``
  (median of 5), in a fresh process under the worker's huge-page tunable; and
  the least wall time a server could take for each burst with one model
  resident: per model a load and that prefill, plus each model's first token to
  its last as fast as the faster side decoded them in the same run, all in
  sequence since the next model may load only once the previous one is gone;
  set against the targets.

Results go to stdout; with ``--out FILE`` also to a markdown file. The runs are in
``scheduler_runs.py``, the tables in ``scheduler_report.py``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    bare_llama_cpp,
    emit,
    link_names,
    median,
    standalone_models,
)
from scheduler_report import (  # noqa: E402
    BURST_HEADER,
    HIT_HEADER,
    SOAK_HEADER,
    markdown,
    rows,
    verdicts,
)
from scheduler_runs import (  # noqa: E402
    N_CTX,
    NAMES,
    PROMPT,
    SOAK_NAMES,
    hit_overhead,
    peer_binary,
    router_burst,
    soak,
    store_burst,
)


def measure(tmp: Path, models: Path, source: str, args) -> dict:
    names = link_names(models, models / source, NAMES)
    from model_swap.tiny_models import write_tiny_model

    for name in SOAK_NAMES:
        write_tiny_model(models / name)
    binary = peer_binary(args.quick)
    if binary is None:
        print(
            "llama-server not found (LLAMA_SERVER_BIN, else .peer/bin/llama-server "
            "unless --quick): the router-mode peer is skipped"
        )

    def paired(tokens: int) -> dict:
        """The default store's burst and the router's, alternating, ``--repeats`` times:
        the run with the median wall time of each (with every run's wall time)."""
        ours, router = [], []
        for run in range(1 if args.quick else args.repeats):
            ours.append(store_burst(tmp, models, names, args, "2", tokens=tokens, run=run))
            if binary:
                router.append(router_burst(tmp, models, names, args, binary, tokens, run=run))
        return {"ours": median_run(ours), "router": median_run(router) if router else None}

    first = paired(args.tokens)
    results = {
        "source": source,
        "scheduler": first["ours"],
        "arrival": store_burst(tmp, models, names, args, "0"),
        "router": first["router"],
        "timelines": {args.tokens: first},
    }
    for tokens in args.timeline_tokens:
        if tokens not in results["timelines"] and not args.quick:
            results["timelines"][tokens] = paired(tokens)
    # What each model's turn costs at least: llama.cpp alone loading the file (warm in the
    # page cache after the bursts) and evaluating its group's prompts in one step, in a fresh
    # process with the worker's huge pages; the floor the report sets the targets against.
    sequences = min(-(-args.clients // len(names)), args.parallel)
    bare = bare_llama_cpp(models / source, PROMPT, sequences, N_CTX, BARE_LOADS)
    results["bare_load"] = {
        "median": median(bare["loads"]),
        "all": bare["loads"],
        "prefill": median(bare["prefills"]),
        "sequences": sequences,
    }
    if args.quick:  # the suite's test run: the bursts only (section 2 measures hits)
        results["soak"] = results["hits"] = None
        return results
    results["soak"] = {
        "scheduler": soak(tmp, models, args, "2"),
        "arrival": soak(tmp, models, args, "0"),
    }
    results["hits"] = hit_overhead(tmp, models, SOAK_NAMES[0], args.hits)
    if args.baseline_src:
        results["before"] = store_burst(tmp, models, names, args, "2", args.baseline_src)
        results["hits_before"] = hit_overhead(
            tmp, models, SOAK_NAMES[0], args.hits, args.baseline_src
        )
    return results


BARE_LOADS = 5


def median_run(runs: list[dict]) -> dict:
    """The run with the median wall time (the upper one of an even count), with ``walls``:
    every run's wall time in the order run."""
    chosen = sorted(runs, key=lambda r: r["wall"])[len(runs) // 2]
    return {**chosen, "walls": [r["wall"] for r in runs]}


def bench_scheduler(report, args, tmp: Path, models: Path, source: str) -> None:
    """The suite's section 9."""
    options = scheduler_options(args.quick)
    results = measure(tmp, models, source, options)
    report.data["scheduler"] = results
    burst_rows, soak_rows, hit_rows = rows(results, options)
    report.table(
        f"9a. Scheduler: {options.clients} concurrent streamed requests over three models, "
        "MAX_LOADED_MODELS=1",
        BURST_HEADER,
        burst_rows,
        "; ".join(verdicts(results)),
    )
    if soak_rows:
        report.table(
            f"9b. Thrash soak: {options.soak_clients} clients x {options.soak_requests} requests",
            SOAK_HEADER,
            soak_rows,
        )
        report.table("9c. Hit latency through the store against the worker", HIT_HEADER, hit_rows)


def scheduler_options(quick: bool, argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny models, a smaller burst, bursts only"
    )
    parser.add_argument("--out", type=Path, help="also write the results as markdown here")
    parser.add_argument("--clients", type=int, default=None)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="runs of the default store's burst and the router's, alternating (medians; "
        "--quick: 1)",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=8,
        help="sequences generated at once: the worker's PARALLEL and the router's -np (8, as "
        "llama-server's router was measured with in issue 27)",
    )
    parser.add_argument(
        "--timeline-tokens",
        type=lambda text: [int(t) for t in text.split(",")],
        default=[16, 48],
        help="the bursts' token counts with a timeline (comma-separated; --quick: --tokens)",
    )
    parser.add_argument("--soak-clients", type=int, default=None)
    parser.add_argument("--soak-requests", type=int, default=None)
    parser.add_argument("--hits", type=int, default=None)
    parser.add_argument(
        "--baseline-src",
        type=Path,
        help="another checkout (e.g. the code before the scheduler) measured in the same run",
    )
    options = parser.parse_args(argv if argv is not None else [])
    options.quick = options.quick or quick
    small = options.quick
    options.clients = options.clients or (9 if small else 24)
    options.soak_clients = options.soak_clients or (8 if small else 64)
    options.soak_requests = options.soak_requests or (3 if small else 10)
    options.hits = options.hits or (20 if small else 200)
    return options


def main() -> int:
    args = scheduler_options(False, sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="model-swap-scheduler-") as name:
        tmp = Path(name)
        models, source = standalone_models(tmp, args.quick)
        results = measure(tmp, models, source, args)
    text = markdown(results, args)
    return emit(text, args.out)


if __name__ == "__main__":
    sys.exit(main())
