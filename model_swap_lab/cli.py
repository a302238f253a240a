"""The lab's ``model-swap`` subcommands: ``trace generate``, ``simulate``, ``replay``.

``add_lab_commands`` registers them on ``model-swap``'s parser; the
implementations live in this package.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from model_swap.settings import EnvReader, SettingsError
from model_swap_lab.trace import TraceError


def _bytes(text: str) -> int:
    try:
        return EnvReader({"SIZE": text}).byte_size("SIZE", 0)
    except SettingsError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("SIZE: ")) from None


def _print(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
        return
    for key, value in result.items():
        if not isinstance(value, dict | list):
            print(f"{key:>22}: {value}")
    for index, figures in enumerate(result.get("per_worker", [])):
        line = ", ".join(f"{k} {v}" for k, v in figures.items() if not isinstance(v, dict))
        print(f"{f'worker {index}':>22}: {line}")


def _sizes(args) -> dict[str, int]:
    from model_swap_lab.trace import read_sizes, sizes_from_dir

    return sizes_from_dir(args.models_dir) if args.models_dir else read_sizes(args.sizes)


def cmd_generate(args) -> int:
    from model_swap_lab.generate import assign_sizes, generate, model_names, spec_for
    from model_swap_lab.trace import sizes_from_dir, write_sizes, write_trace

    try:
        spec = spec_for(
            args.preset,
            models=args.models,
            requests=args.requests,
            rate=args.rate,
            zipf=args.zipf,
            burst_probability=args.bursts,
            daily_amplitude=args.daily_amplitude,
            period_seconds=args.period,
            drift=args.drift,
            max_tokens=args.max_tokens,
            seed=args.seed,
        )
        if args.models_dir:
            sizes = sizes_from_dir(args.models_dir)
            names = list(sizes)
        else:
            names = model_names(spec.models)
            sizes = assign_sizes(names, spec)
        trace = generate(spec, names)
    except (ValueError, TraceError) as err:
        print(f"model-swap trace generate: {err}", file=sys.stderr)
        return 2
    if args.sizes_out:
        with open(args.sizes_out, "w") as out:
            write_sizes(sizes, out)
    if args.out:
        with open(args.out, "w") as out:
            write_trace(trace, out)
    else:
        write_trace(trace, sys.stdout)
    return 0


def cmd_azure(args) -> int:
    from model_swap_lab.azure import read_azure
    from model_swap_lab.generate import assign_sizes, model_names, spec_for
    from model_swap_lab.trace import sizes_from_dir, write_sizes, write_trace

    try:
        if args.models_dir:
            sizes = sizes_from_dir(args.models_dir)
            names = list(sizes)
        else:
            if args.models < 1:
                raise ValueError(f"--models must be >= 1, not {args.models}")
            names = model_names(max(2, args.models))[: args.models]
            sizes = assign_sizes(names, spec_for("zipf", seed=args.seed))
        imported = read_azure(
            args.file,
            names,
            first_minute=args.first_minute,
            last_minute=args.last_minute,
            scale=args.scale,
            seed=args.seed,
        )
    except (ValueError, TraceError) as err:
        print(f"model-swap trace azure: {err}", file=sys.stderr)
        return 2
    print(
        f"model-swap trace azure: {len(imported.requests)} requests; the {len(imported.mapped)} "
        f"busiest of {imported.functions} functions mapped to models; "
        f"{imported.dropped_invocations} invocations of the others dropped",
        file=sys.stderr,
    )
    if args.sizes_out:
        with open(args.sizes_out, "w") as out:
            write_sizes({name: sizes[name] for name in imported.mapped}, out)
    if args.out:
        with open(args.out, "w") as out:
            write_trace(imported.requests, out)
    else:
        write_trace(imported.requests, sys.stdout)
    return 0


def _cost_model(args):
    from model_store_server.policies.cost_model import CostModel

    return CostModel(
        push_bytes_per_s=args.push_mb_per_s * 1e6,
        load_bytes_per_s=args.load_mb_per_s * 1e6,
        push_overhead_s=args.push_overhead_ms / 1000,
        load_overhead_s=args.load_overhead_ms / 1000,
        call_overhead_s=args.call_overhead_ms / 1000,
    )


def cmd_simulate(args) -> int:
    import requests

    from model_swap_lab.calibrate import store_calibration, store_status
    from model_swap_lab.fleet import simulate_fleet
    from model_swap_lab.simulate import SimConfig, footprints_from_dir, simulate
    from model_swap_lab.trace import read_trace

    try:
        cost = _cost_model(args)
        if args.calibrate_from:
            _, cost = store_calibration(store_status(args.calibrate_from))
        sizes = _sizes(args)
        trace = read_trace(args.trace, known=sizes)
        config = SimConfig(
            policy=args.policy,
            max_cache_size=args.max_cache_size,
            max_cache_bytes=args.max_cache_bytes,
            max_loaded_models=args.max_loaded_models,
            max_loaded_bytes=args.max_loaded_bytes,
            ttl_seconds=args.ttl_seconds,
            freq_half_life=args.freq_half_life,
            prewarm=args.prewarm,
            prewarm_margin=args.prewarm_margin,
            prewarm_bin_seconds=args.prewarm_bin_seconds,
        )
        if args.prewarm != "off" and (args.workers != 1 or args.placement != "locality"):
            raise ValueError("--prewarm is simulated on one worker (--workers 1)")
        footprints = (
            footprints_from_dir(args.models_dir, sizes, args.n_ctx) if args.models_dir else None
        )
        if args.workers == 1 and args.placement == "locality":
            result = simulate(trace, sizes, config, cost=cost, footprints=footprints)
        else:
            result = simulate_fleet(
                trace,
                sizes,
                config,
                workers=args.workers,
                placement=args.placement,
                seed=args.seed,
                cost=cost,
                footprints=footprints,
            )
    except (TraceError, ValueError, SettingsError) as err:
        print(f"model-swap simulate: {err}", file=sys.stderr)
        return 2
    except requests.RequestException as err:
        print(f"model-swap simulate: the store did not answer: {err}", file=sys.stderr)
        return 1
    _print(result, args.json)
    return 0


def cmd_replay(args) -> int:
    import requests

    from model_swap_lab.calibrate import simulated_vs_live, store_status
    from model_swap_lab.replay import replay, reset_store, store_sizes
    from model_swap_lab.trace import read_trace

    try:
        sizes = _sizes(args) if (args.models_dir or args.sizes) else None
        trace = read_trace(args.trace, known=sizes)
        if args.timeout <= 0:
            raise ValueError(f"--timeout must be > 0 seconds, not {args.timeout:g}")
        if args.reset:
            reset_store(args.store, timeout=args.timeout)
        result = replay(
            trace,
            args.store,
            speed=args.speed,
            concurrency=args.concurrency,
            sizes=sizes,
            timeout=args.timeout,
        )
        if not args.no_simulate:
            sizes = sizes if sizes is not None else store_sizes(args.store)
            result.update(simulated_vs_live(trace, sizes, result, store_status(args.store)))
    except (TraceError, ValueError) as err:
        print(f"model-swap replay: {err}", file=sys.stderr)
        return 2
    except requests.RequestException as err:
        print(f"model-swap replay: the store did not answer: {err}", file=sys.stderr)
        return 1
    _print(result, args.json)
    return 0


def add_lab_commands(commands) -> None:
    """Add ``trace``, ``simulate`` and ``replay`` to ``model-swap``'s subparsers."""
    from model_store_server.config import DEFAULTS, PREWARM_MODES
    from model_store_server.policies.cost_model import (
        DEFAULT_CALL_OVERHEAD_S,
        DEFAULT_LOAD_BYTES_PER_S,
        DEFAULT_LOAD_OVERHEAD_S,
        DEFAULT_PUSH_BYTES_PER_S,
        DEFAULT_PUSH_OVERHEAD_S,
    )
    from model_swap_lab.fleet import PLACEMENTS
    from model_swap_lab.generate import PRESETS
    from model_swap_lab.replay import DEFAULT_TIMEOUT_S
    from model_swap_lab.simulate import POLICY_CHOICES

    trace = commands.add_parser("trace", help="work with request traces (CSV timestamp,model)")
    trace_commands = trace.add_subparsers(dest="trace_command", required=True)
    gen = trace_commands.add_parser("generate", help="write a seeded synthetic trace")
    gen.add_argument("--preset", choices=list(PRESETS), default="zipf")
    gen.add_argument("--models", type=int, help="number of models (default 40)")
    gen.add_argument("--requests", type=int, help="number of requests (default 5000)")
    gen.add_argument("--rate", type=float, help="mean requests per second (default 2)")
    gen.add_argument("--zipf", type=float, help="Zipf exponent of popularity")
    gen.add_argument("--bursts", type=float, help="probability per request that a burst starts")
    gen.add_argument("--daily-amplitude", type=float, help="rate swing of the daily cycle, 0-1")
    gen.add_argument("--period", type=float, help="seconds of one daily cycle")
    gen.add_argument("--drift", type=float, help="probability per request of a rank swap")
    gen.add_argument("--max-tokens", type=int, help="max_tokens column (default 8)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--models-dir", type=Path, help="use these models (names and sizes)")
    gen.add_argument("--sizes-out", type=Path, help="write model,size_bytes CSV here")
    gen.add_argument("--out", type=Path, help="trace file (default: standard output)")
    gen.set_defaults(func=cmd_generate)

    azure = trace_commands.add_parser(
        "azure", help="import an Azure Functions 2019 invocations-per-minute CSV"
    )
    azure.add_argument("file", type=Path, help="invocations_per_function_md.anon.dNN.csv")
    azure.add_argument("--models", type=int, default=40, help="map the N busiest functions")
    azure.add_argument("--models-dir", type=Path, help="map functions to these models instead")
    azure.add_argument("--first-minute", type=int, default=1, help="1-based, inclusive")
    azure.add_argument("--last-minute", type=int, help="inclusive (default: the last)")
    azure.add_argument("--scale", type=float, default=1.0, help="multiply every count by this")
    azure.add_argument("--seed", type=int, default=0)
    azure.add_argument("--sizes-out", type=Path, help="write model,size_bytes CSV here")
    azure.add_argument("--out", type=Path, help="trace file (default: standard output)")
    azure.set_defaults(func=cmd_azure)

    def add_sizes(parser, required: bool) -> None:
        group = parser.add_mutually_exclusive_group(required=required)
        group.add_argument("--models-dir", type=Path, help="model sizes from these files")
        group.add_argument("--sizes", type=Path, help="model sizes from a model,size_bytes CSV")

    sim = commands.add_parser("simulate", help="run a trace through a policy, offline")
    sim.add_argument("trace", type=Path)
    sim.add_argument("--policy", choices=POLICY_CHOICES, default=DEFAULTS["CACHE_POLICY"])
    sim.add_argument("--max-cache-size", type=int, default=DEFAULTS["MAX_CACHE_SIZE"])
    sim.add_argument("--max-cache-bytes", type=_bytes, default=DEFAULTS["MAX_CACHE_BYTES"])
    sim.add_argument("--max-loaded-models", type=int, default=DEFAULTS["MAX_LOADED_MODELS"])
    sim.add_argument("--max-loaded-bytes", type=_bytes, default=DEFAULTS["MAX_LOADED_BYTES"])
    sim.add_argument("--ttl-seconds", type=float, default=DEFAULTS["TTL_SECONDS"])
    sim.add_argument("--freq-half-life", type=float, default=DEFAULTS["FREQ_HALF_LIFE"])
    sim.add_argument("--n-ctx", type=int, default=2048, help="worker N_CTX for footprints")
    add_sizes(sim, required=True)
    sim.add_argument("--push-mb-per-s", type=float, default=DEFAULT_PUSH_BYTES_PER_S / 1e6)
    sim.add_argument("--load-mb-per-s", type=float, default=DEFAULT_LOAD_BYTES_PER_S / 1e6)
    sim.add_argument("--push-overhead-ms", type=float, default=DEFAULT_PUSH_OVERHEAD_S * 1000)
    sim.add_argument("--load-overhead-ms", type=float, default=DEFAULT_LOAD_OVERHEAD_S * 1000)
    sim.add_argument(
        "--call-overhead-ms",
        type=float,
        default=DEFAULT_CALL_OVERHEAD_S * 1000,
        help="per evict/unload call on the worker",
    )
    sim.add_argument(
        "--calibrate-from",
        metavar="URL",
        help="use the rates a running store learned (its /status explain.cost_model)",
    )
    sim.add_argument(
        "--workers",
        type=int,
        default=1,
        help="simulate this many workers behind the store, each with these budgets",
    )
    sim.add_argument(
        "--placement",
        choices=PLACEMENTS,
        default="locality",
        help="which worker serves a request: the store's placement, or one at random",
    )
    sim.add_argument("--seed", type=int, default=0, help="seeds --placement random")
    sim.add_argument(
        "--prewarm",
        choices=PREWARM_MODES,
        default=DEFAULTS["PREWARM"],
        help="bring models in before their predicted requests (the store's PREWARM)",
    )
    sim.add_argument("--prewarm-margin", type=float, default=DEFAULTS["PREWARM_MARGIN"])
    sim.add_argument("--prewarm-bin-seconds", type=float, default=DEFAULTS["PREWARM_BIN_SECONDS"])
    sim.add_argument("--json", action="store_true", help="print one JSON object")
    sim.set_defaults(func=cmd_simulate)

    rep = commands.add_parser("replay", help="send a trace to a live store and measure it")
    rep.add_argument("trace", type=Path)
    rep.add_argument("--store", required=True, help="the store's base URL")
    rep.add_argument("--speed", type=float, default=1.0, help="replay faster (0: no pauses)")
    rep.add_argument("--concurrency", type=int, default=1)
    rep.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="seconds per request; a request past it counts as an error (default %(default)g)",
    )
    rep.add_argument(
        "--reset",
        action="store_true",
        help="POST /reset first: start from an empty worker, like the simulator",
    )
    rep.add_argument(
        "--no-simulate",
        action="store_true",
        help="skip simulating the trace with the store's settings and learned rates",
    )
    add_sizes(rep, required=False)
    rep.add_argument("--json", action="store_true", help="print one JSON object")
    rep.set_defaults(func=cmd_replay)
