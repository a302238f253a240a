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
  the same three files, ``--models-max 1``, ``-c 2048`` like the worker's N_CTX),
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

Results go to stdout; with ``--out FILE`` also to a markdown file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    Services,
    emit,
    free_port,
    link_names,
    llama_server_bin,
    median,
    percentile,
    standalone_models,
    start_process,
    stop_process,
    stream_timing,
)
from timeline import (  # noqa: E402
    TIMELINE_HEADER,
    client_timeline,
    timeline,
    timeline_rows,
    where_the_time_goes,
)

NAMES = ("sched-a.gguf", "sched-b.gguf", "sched-c.gguf")
SOAK_NAMES = ("soak-a.gguf", "soak-b.gguf", "soak-c.gguf")
PROMPT = "Once upon a time"


def first_token_stream(url: str, model: str, tokens: int, field: str) -> dict:
    """One streamed completion: seconds to the first text chunk, total seconds, model,
    the wall time it was sent and its request id (``X-Request-Id``, for the timeline)."""
    rid = uuid.uuid4().hex
    sent, started = time.time(), time.perf_counter()
    body = {"model": model, "prompt": PROMPT, "max_tokens": tokens, "stream": True}
    first, answered = None, None
    headers = {"X-Request-Id": rid}
    with requests.post(url, json=body, stream=True, timeout=600, headers=headers) as response:
        response.raise_for_status()
        answered = response.headers.get("X-Model")
        for line in response.iter_lines():
            if not line.startswith(b"data: {"):
                continue  # SSE comments (a load in progress) and [DONE]
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"{model}: {chunk['error']}")
            if first is None and chunk.get("choices"):
                first = time.perf_counter() - started
            answered = answered or chunk.get(field)
    total = time.perf_counter() - started
    return {"ttft": first, "total": total, "model": answered, "sent": sent, "id": rid}


def burst(url: str, names: list[str], clients: int, tokens: int, strip_ext: bool) -> dict:
    """``clients`` concurrent requests, models interleaved; figures over all of them."""
    asked = [names[i % len(names)] for i in range(clients)]
    asked = [name.removesuffix(".gguf") if strip_ext else name for name in asked]
    gate = threading.Barrier(clients)

    def one(model: str) -> dict:
        gate.wait()
        return first_token_stream(url, model, tokens, "model")

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, asked))
    wall = time.perf_counter() - started
    ttfts = [r["ttft"] for r in results]
    right = sum(1 for r, model in zip(results, asked, strict=True) if r["model"] == model)
    for r, model in zip(results, asked, strict=True):
        r["asked"] = model.removesuffix(".gguf")
    return {
        "results": results,
        "wall": wall,
        "p50": percentile(ttfts, 50),
        "p95": percentile(ttfts, 95),
        "right": right,
        "count": clients,
    }


@contextlib.contextmanager
def checkout(source: Path | None):
    """Start services from ``source`` (another checkout: ``python -m`` imports from the
    working directory), or from this one."""
    if source is None:
        yield
        return
    here = Path.cwd()
    os.chdir(source)
    try:
        yield
    finally:
        os.chdir(here)


def store_burst(
    tmp: Path,
    models: Path,
    names: list[str],
    args,
    max_wait: str,
    source: Path | None = None,
    tokens: int | None = None,
) -> dict:
    tokens = tokens or args.tokens
    work = tmp / f"sched-store-{max_wait}-{tokens}{'-before' if source else ''}"
    work.mkdir()
    with checkout(source):
        services = Services(
            work,
            models,
            MAX_CACHE_SIZE="3",
            MAX_LOADED_MODELS="1",
            SCHEDULER_MAX_WAIT=max_wait,
            LOADING_COMMENTS_AFTER="600",
            LOG_FORMAT="json",  # the timeline reads its lines by request id
            LOG_LEVEL="INFO",
        )
    try:
        for name in names:  # every file on the worker's disk; nothing resident
            services.ask(name)
        for name in names:
            requests.post(f"{services.store_url}/models/{name}/unload", timeout=120)
        loads = services.worker_status()["loads"]
        try:
            result = burst(
                f"{services.store_url}/v1/completions", names, args.clients, tokens, False
            )
        except Exception:
            print((work / "store.log").read_text()[-4000:], file=sys.stderr)
            raise
        result["loads"] = services.worker_status()["loads"] - loads
    finally:
        services.stop()
    result["timeline"] = timeline(result.pop("results"), work)
    return result


def peer_binary(quick: bool) -> str | None:
    """The llama-server to compare with (``--quick``: only one named by LLAMA_SERVER_BIN)."""
    if quick and not os.environ.get("LLAMA_SERVER_BIN"):
        return None
    binary = llama_server_bin()
    return str(binary) if binary else None


def router_burst(
    tmp: Path, models: Path, names: list[str], args, binary: str, tokens: int | None = None
) -> dict:
    """llama-server in router mode over a directory holding only ``names``."""
    tokens = tokens or args.tokens
    directory = tmp / f"sched-router-models-{tokens}"
    directory.mkdir()
    for name in names:
        os.link(models / name, directory / name)
    port = free_port()
    log = tmp / f"sched-router-{tokens}.log"
    process = start_process(
        [
            binary,
            "--models-dir",
            str(directory),
            "--models-max",
            "1",
            "-c",
            "2048",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        {},
        log,
        f"http://127.0.0.1:{port}/models",
    )
    try:
        url = f"http://127.0.0.1:{port}/v1/completions"
        result = burst(url, names, args.clients, tokens, True)
    finally:
        stop_process(process)
    result["loads"] = len(re.findall(r"spawning server instance with name=", log.read_text()))
    result["timeline"] = client_timeline(result.pop("results"))
    return result


def soak(tmp: Path, models: Path, args, max_wait: str) -> dict:
    work = tmp / f"sched-soak-{max_wait}"
    work.mkdir()
    services = Services(
        work, models, MAX_CACHE_SIZE="1", MAX_LOADED_MODELS="1", SCHEDULER_MAX_WAIT=max_wait
    )
    try:
        services.ask(SOAK_NAMES[0])
        pushes = services.worker_status()["received"]["uploads"]
        url = f"{services.store_url}/user_request"
        latencies: list[float] = []
        lock = threading.Lock()

        def client(index: int) -> None:
            for j in range(args.soak_requests):
                model = SOAK_NAMES[(index + j) % len(SOAK_NAMES)]
                _, total, _ = stream_timing(
                    url, {"prompt": PROMPT, "model": model, "max_tokens": 2}
                )
                with lock:
                    latencies.append(total)

        started = time.perf_counter()
        with ThreadPoolExecutor(args.soak_clients) as pool:
            list(pool.map(client, range(args.soak_clients)))
        wall = time.perf_counter() - started
        return {
            "pushes": services.worker_status()["received"]["uploads"] - pushes,
            "p95": percentile(latencies, 95),
            "p50": percentile(latencies, 50),
            "wall": wall,
            "count": len(latencies),
        }
    finally:
        services.stop()


def hit_overhead(
    tmp: Path, models: Path, name: str, count: int, source: Path | None = None
) -> dict:
    work = tmp / f"sched-hits{'-before' if source else ''}"
    work.mkdir()
    with checkout(source):
        services = Services(work, models)
    try:
        services.ask(name)
        body = {"prompt": PROMPT, "max_tokens": 1}
        store, worker = [], []
        for _ in range(count):  # interleaved: the two share every disturbance
            store.append(services.ask(name, "already_loaded")[0])
            worker.append(stream_timing(f"{services.worker_url}/infer", {**body, "model": name})[0])
        return {"store": median(store), "worker": median(worker)}
    finally:
        services.stop()


def measure(tmp: Path, models: Path, source: str, args) -> dict:
    names = link_names(models, models / source, NAMES)
    from model_swap.tiny_models import write_tiny_model

    for name in SOAK_NAMES:
        write_tiny_model(models / name)
    results = {
        "source": source,
        "scheduler": store_burst(tmp, models, names, args, "2"),
        "arrival": store_burst(tmp, models, names, args, "0"),
    }
    binary = peer_binary(args.quick)
    if binary is None:
        results["router"] = None
        print(
            "llama-server not found (LLAMA_SERVER_BIN, else .peer/bin/llama-server "
            "unless --quick): the router-mode peer is skipped"
        )
    else:
        results["router"] = router_burst(tmp, models, names, args, binary)
    results["timelines"] = {
        args.tokens: {"ours": results["scheduler"], "router": results["router"]}
    }
    for tokens in args.timeline_tokens:
        if tokens not in results["timelines"] and not args.quick:
            results["timelines"][tokens] = {
                "ours": store_burst(tmp, models, names, args, "2", tokens=tokens),
                "router": binary and router_burst(tmp, models, names, args, binary, tokens),
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


BURST_HEADER = [
    "server",
    "loads",
    "wall time",
    "TTFT p50",
    "TTFT p95",
    "right model",
    "wall vs router",
]


def rows(results: dict, args) -> tuple[list[list[str]], list[list[str]], list[list[str]]]:
    router = results["router"]
    burst_rows = []
    for label, key in (
        ("model-swap, SCHEDULER_MAX_WAIT=2 (default)", "scheduler"),
        ("model-swap, SCHEDULER_MAX_WAIT=0 (arrival order)", "arrival"),
        ("llama-server router, --models-max 1", "router"),
        (f"model-swap from {args.baseline_src} (before)", "before"),
    ):
        if key not in results:
            continue
        r = results[key]
        if r is None:
            burst_rows.append([label, "skipped: llama-server not found", "", "", "", "", ""])
            continue
        ratio = f"{r['wall'] / router['wall']:.2f}x" if router else "n/a"
        burst_rows.append(
            [
                label,
                str(r["loads"]),
                f"{r['wall']:.2f} s",
                f"{r['p50']:.2f} s",
                f"{r['p95']:.2f} s",
                f"{r['right']}/{r['count']}",
                ratio,
            ]
        )
    soak_rows = []
    for label, key in (("SCHEDULER_MAX_WAIT=2", "scheduler"), ("SCHEDULER_MAX_WAIT=0", "arrival")):
        if results["soak"] is None:
            break
        r = results["soak"][key]
        soak_rows.append(
            [
                label,
                str(r["pushes"]),
                f"{r['p50'] * 1000:.0f} ms",
                f"{r['p95'] * 1000:.0f} ms",
                f"{r['wall']:.1f} s",
                str(r["count"]),
            ]
        )
    hit_rows = [
        [
            label,
            f"{hits['store'] * 1000:.2f} ms",
            f"{hits['worker'] * 1000:.2f} ms",
            f"{(hits['store'] - hits['worker']) * 1000:+.2f} ms",
        ]
        for label, hits in (("this code", results["hits"]), ("before", results.get("hits_before")))
        if hits
    ]
    return burst_rows, soak_rows, hit_rows


SOAK_HEADER = ["store", "pushes", "p50", "p95", "wall time", "requests"]
HIT_HEADER = ["code", "store /user_request", "worker /infer", "overhead"]


def verdicts(results: dict) -> list[str]:
    s, router = results["scheduler"], results["router"]
    lines = [
        f"loads <= distinct models + 2 (5): {s['loads']} -> "
        + ("met" if s["loads"] <= 5 else "not met")
    ]
    if router:
        ratio = s["wall"] / router["wall"]
        lines.append(
            f"wall time <= 0.67x router's: {ratio:.2f}x -> {'met' if ratio <= 0.67 else 'not met'}"
        )
        for tokens, pair in sorted(results.get("timelines", {}).items()):
            if tokens == 48 and pair["router"]:
                ratio = pair["ours"]["wall"] / pair["router"]["wall"]
                verdict = "met" if ratio <= 0.8 else "not met"
                lines.append(f"wall time at 48 tokens <= 0.8x router's: {ratio:.2f}x -> {verdict}")
    else:
        lines.append("wall time against the router: not measured (llama-server not built)")
    if results["hits"]:
        over = (results["hits"]["store"] - results["hits"]["worker"]) * 1000
        verdict = "met" if over <= 1 else "not met"
        lines.append(f"hit overhead <= +1 ms: {over:+.2f} ms -> {verdict}")
    return lines


def timeline_sections(results: dict) -> list[str]:
    lines = []
    for tokens, pair in sorted(results["timelines"].items()):
        ours, router = pair["ours"], pair["router"]
        lines += [
            f"## Timeline: the burst at {tokens} tokens",
            "",
            where_the_time_goes(tokens, ours, router),
            "",
        ]
        lines += ["model-swap (default store), seconds from the first request sent:", ""]
        lines += [table(TIMELINE_HEADER, timeline_rows(ours["timeline"])), ""]
        if router:
            lines += ["llama-server router, as its clients saw it:", ""]
            lines += [table(TIMELINE_HEADER, timeline_rows(router["timeline"])), ""]
    return lines


def table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])


def markdown(results: dict, args) -> str:
    burst_rows, soak_rows, hit_rows = rows(results, args)
    more = []
    if soak_rows:
        more = [
            f"## Thrash soak: {args.soak_clients} clients x {args.soak_requests} requests over "
            "three tiny models, MAX_CACHE_SIZE=1",
            "",
            table(SOAK_HEADER, soak_rows),
            "",
            f"## Hit latency: time to first byte, median of {args.hits}, max_tokens=1",
            "",
            table(HIT_HEADER, hit_rows),
            "",
        ]
    return "\n".join(
        [
            "# Scheduler benchmark",
            "",
            f"Produced by `uv run python benchmarks/scheduler.py{' --quick' if args.quick else ''}"
            f"{f' --baseline-src {args.baseline_src}' if args.baseline_src else ''} "
            f"--out ...` on {os.cpu_count()} CPU cores, no GPU. Model: three copies of "
            f"{results['source']} under three names; MAX_LOADED_MODELS=1.",
            "",
            f"## Burst: {args.clients} concurrent streamed /v1/completions, "
            f"{args.tokens} tokens each",
            "",
            table(BURST_HEADER, burst_rows),
            "",
            *more,
            *timeline_sections(results),
            "## Targets",
            "",
            *[f"- {line}" for line in verdicts(results)],
            "",
        ]
    )


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
