"""Sections 2 to 4 of the suite: swap latency against a bare load, the store
against a peer server, and streaming tokens/s against bare llama-cpp-python.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    Services,
    bare_load_first_token,
    median,
    start_llama_server,
    stop_process,
    stream_timing,
)
from suite_report import OTHER, verdict  # noqa: E402
from suite_transfer import push_seconds  # noqa: E402

from model_store_server.digests import DigestCache  # noqa: E402
from model_store_server.transport.http import HttpTransport  # noqa: E402
from model_store_server.worker_client import WorkerClient  # noqa: E402

# -- 2. swap latency ----------------------------------------------------------------------


def bench_swaps(report, args, models: Path, services: Services, subjects: list[str]) -> None:
    rows = []
    for model in subjects:
        bare, cold, warm, hit, direct = [], [], [], [], []
        for _ in range(args.repeats):
            bare.append(bare_load_first_token(models / model))
            services.reset()
            cold.append(services.ask(model, "load_from_store")[0])
            hit.append(services.ask(model, "already_loaded")[0])
            direct.append(
                stream_timing(
                    f"{services.worker_url}/infer",
                    {"prompt": "Once upon a time", "max_tokens": 1, "model": model},
                )[0]
            )
            services.ask(OTHER)
            warm.append(services.ask(model, "load_from_local_store")[0])
        b, c, w, h, d = (median(v) * 1000 for v in (bare, cold, warm, hit, direct))
        # The cold target: push time + warm time (+5%). Push time of this file, measured now.
        client = WorkerClient(services.worker_url, connect_timeout=5, read_timeout=600)
        path = models / model
        digest = DigestCache().digest(path)
        pushes = [
            push_seconds(HttpTransport(client), client, path, digest) for _ in range(args.repeats)
        ]
        p = median(pushes) * 1000
        report.data.setdefault("swaps", []).append(
            {"model": model, "bare": b, "cold": c, "warm": w, "hit": h, "direct": d, "push": p}
        )
        size = path.stat().st_size / 1e6
        rows += [
            [
                model,
                f"{size:.0f} MB",
                "warm (load_from_local_store)",
                f"{w:.1f} ms",
                f"bare load + 1st token {b:.1f} ms",
                f"{w / b:.2f}x",
                f"<= 1.10x: {verdict(w <= 1.1 * b)}",
            ],
            [
                model,
                f"{size:.0f} MB",
                "hit (already_loaded)",
                f"{h:.1f} ms",
                f"worker /infer alone {d:.1f} ms",
                f"+{h - d:.1f} ms",
                f"<= +2 ms: {verdict(h <= d + 2)}",
            ],
            [
                model,
                f"{size:.0f} MB",
                "cold (load_from_store)",
                f"{c:.1f} ms",
                f"push {p:.1f} + warm {w:.1f} ms",
                f"{c / (p + w):.2f}x",
                f"<= 1.05x: {verdict(c <= 1.05 * (p + w))}",
            ],
        ]
    report.table(
        "2. Swap latency: time to first byte through the store, max_tokens=1",
        ["model", "size", "case", "store", "baseline", "ratio", "target"],
        rows,
        "Bare = llama-cpp-python in the benchmark process: `Llama(path)` + tokenize + first "
        "sampled token. Before each cold request the store is reset (`POST /reset`); warm = the "
        "model is in the worker's disk cache but another one is loaded.",
    )


# -- 3. against a peer --------------------------------------------------------------------


def bench_peer(report, args, tmp: Path, models: Path, services: Services, subjects) -> None:
    peer, peer_url = start_llama_server(tmp, {m: models / m for m in [*subjects, OTHER]}, "peer")
    url = f"{peer_url}/v1/completions"

    def peer_ttfb(model: str) -> float:
        body = {"model": model, "prompt": "Once upon a time", "max_tokens": 1, "stream": True}
        return stream_timing(url, body)[0]

    rows = []
    try:
        for model in subjects:
            services.ask(model)  # in the worker's cache, so the swaps below are local loads
            peer_hit, peer_swap, our_hit, our_swap = [], [], [], []
            for _ in range(args.repeats):
                peer_ttfb(OTHER)
                peer_swap.append(peer_ttfb(model))
                peer_hit.append(peer_ttfb(model))
                services.ask(OTHER)
                our_swap.append(services.ask(model, "load_from_local_store")[0])
                our_hit.append(services.ask(model, "already_loaded")[0])
            for case, ours, theirs in (("hit", our_hit, peer_hit), ("swap", our_swap, peer_swap)):
                o, t = median(ours) * 1000, median(theirs) * 1000
                rows.append(
                    [
                        model,
                        case,
                        f"{o:.1f} ms",
                        f"{t:.1f} ms",
                        f"{o / t:.2f}x",
                        f"<= 1.00x: {verdict(o <= t)}",
                    ]
                )
                report.data.setdefault("peer", []).append(
                    {"model": model, "case": case, "ours": o, "peer": t}
                )
    finally:
        stop_process(peer)
    report.table(
        "3. Against a peer: llama-cpp-python's server, multi-model config, same models",
        ["model", "case", "model-swap TTFB", "llama-cpp-python server TTFB", "ratio", "target"],
        rows,
        "Peer: `python -m llama_cpp.server --config_file` with the same files, streamed "
        "`/v1/completions`, max_tokens=1. Its swap loads from local disk, so it is compared "
        "with model-swap's warm swap (load_from_local_store); hit = the model already loaded.",
    )


# -- 4. streaming -------------------------------------------------------------------------


def bare_tokens_per_second(path: Path, tokens: int) -> float:
    import llama_cpp
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_gpu_layers=-1, n_ctx=2048, verbose=False)
    prompt = llm.tokenize(b"Once upon a time", add_bos=True)
    count, first = 0, None
    for token in llm.generate(prompt):
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
            break
        llm.detokenize([token])
        count += 1
        if first is None:
            first = time.perf_counter()
        if count >= tokens:
            break
    elapsed = time.perf_counter() - first
    llm.close()
    return (count - 1) / elapsed


def bench_streaming(report, args, models: Path, services: Services, model: str) -> None:
    ours, bare = [], []
    for _ in range(args.repeats):
        bare.append(bare_tokens_per_second(models / model, args.stream_tokens))
        services.ask(model)
        first, total = services.ask(model, "already_loaded", max_tokens=args.stream_tokens)
        count = services.worker_status()["last_generation"]["tokens"]
        ours.append((count - 1) / (total - first))
    o, b = median(ours), median(bare)
    report.data["streaming"] = {"ours": o, "bare": b}
    report.table(
        f"4. Streaming: tokens per second after the first token, "
        f"{args.stream_tokens} tokens, {model}",
        ["through the store", "bare llama-cpp-python", "ratio", "target"],
        [
            [
                f"{o:.1f} tok/s",
                f"{b:.1f} tok/s",
                f"{o / b:.2f}x",
                f">= 0.97x: {verdict(o >= 0.97 * b)}",
            ]
        ],
        "Through the store: tokens counted by the worker (`last_generation`), time measured by the "
        "client from the first byte to the end of the stream. Bare: the same sampling loop in "
        "the benchmark process.",
    )
