"""Kept prompts (prefix reuse, the host-memory prompt cache, states across swaps) against
llama.cpp's llama-server, side by side: time to first token.

    uv run python benchmarks/kvcache.py                      # Gemma 3 270M
    uv run python benchmarks/kvcache.py --quick              # a tiny model, small traffic
    uv run python benchmarks/kvcache.py --out benchmarks/KVCACHE.md
    uv run python benchmarks/kvcache.py --break-even         # restore vs evaluate, no servers

model-swap: a worker (PARALLEL=4, N_CTX=2048, default KV_CACHE_BYTES) and a store as
separate processes. llama-server ($LLAMA_SERVER_BIN, else .peer/bin/llama-server):
``-np 4 -c 8192`` with its defaults (``cache_prompt`` on, ``--cache-ram`` 8 GiB), and for
two models its router (``--models-dir``, ``--models-max 1``). Traffic (greedy, streamed):

- repeated prompt: a 5-token and a ~300-token prompt, sent once, then ``--hits`` more
  times; TTFT median of the hits;
- chat: ``--conversations`` conversations of ``--turns`` turns (each ~150 tokens of user
  text and a 32-token answer; history to ~1,500 tokens), a turn of every conversation at a
  time, ``--concurrency`` requests in flight; TTFT p50 per turn;
- two models at MAX_LOADED_MODELS=1 (the same file under two names): the same chat, each
  turn on the other model, so every turn swaps;
- memory: the worker's RSS after loading, and its peak over the chat, against
  KV_CACHE_BYTES.

TTFT: the request sent to its first text chunk at the client. The machine may be shared:
every ratio is against llama-server measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    Services,
    emit,
    free_port,
    link_names,
    llama_server_bin,
    percentile,
    reset_peak_rss,
    rss_bytes,
    serving_pid,
    standalone_models,
    start_process,
    stop_process,
)
from prefix_reuse import filler, first_text  # noqa: E402

PARALLEL, N_CTX = 4, 2048
TWO = ("kv-one.gguf", "kv-two.gguf")


def hits(url: str, model: str, prompt: str, count: int, extra: dict) -> float:
    """Median TTFT of ``count`` sends of ``prompt`` after a first one (not counted)."""
    body = {"model": model, "prompt": prompt, "max_tokens": 4, "temperature": 0, **extra}
    first_text(f"{url}/v1/completions", body)
    return statistics.median(first_text(f"{url}/v1/completions", body)[0] for _ in range(count))


def chat(url: str, models: tuple[str, ...], args, extra: dict) -> list[list[float]]:
    """TTFT of every conversation's turns, ``turn`` on ``models[turn % len(models)]``; a
    turn of all conversations at a time, ``concurrency`` requests in flight."""
    histories = [
        [{"role": "system", "content": f"You are assistant number {c}."}]
        for c in range(args.conversations)
    ]
    ttfts: list[list[float]] = [[] for _ in range(args.turns)]

    def one(c: int, turn: int) -> float:
        messages = histories[c]
        messages.append({"role": "user", "content": filler(1000 * c + turn, args.turn_words)})
        body = {
            "model": models[turn % len(models)],
            "messages": messages,
            "max_tokens": 32,
            "temperature": 0,
            **extra,
        }
        ttft, usage = first_text(f"{url}/v1/chat/completions", body)
        messages.append({"role": "assistant", "content": usage["text"]})
        return ttft

    with ThreadPoolExecutor(args.concurrency) as pool:
        for turn in range(args.turns):
            ttfts[turn] = list(pool.map(lambda c, t=turn: one(c, t), range(args.conversations)))
    return ttfts


def ours(tmp: Path, models: Path, names: tuple[str, ...], args) -> dict:
    found = {}
    for case in ("one", "two"):
        work = tmp / f"ours-{case}"
        work.mkdir()
        env = {"PARALLEL": str(PARALLEL), "N_CTX": str(N_CTX)}
        if case == "two":
            env["MAX_LOADED_MODELS"] = "1"
        services = Services(work, models, **env)
        try:
            url = services.store_url
            first_text(
                f"{url}/v1/completions", {"model": names[0], "prompt": "hi", "max_tokens": 1}
            )
            if case == "one":
                pid = serving_pid(services.worker.pid)
                status = services.worker_status()
                rss_loaded = rss_bytes(pid)
                reset_peak_rss(pid)
                found["short"] = hits(url, names[0], "The capital of France", args.hits, {})
                found["long"] = hits(url, names[0], filler(7, args.prompt_words), args.hits, {})
                found["chat"] = chat(url, names[:1], args, {})
                found["memory"] = {
                    "kv_cache_bytes": status["kv_cache_bytes"],
                    "rss_loaded": rss_loaded,
                    "rss_peak": rss_bytes(pid, "VmHWM"),
                    "kept": services.worker_status()["resident"][0]["kept_bytes"],
                }
            else:
                found["two"] = chat(url, names, args, {})
                found["kv_disk"] = services.worker_status()["kv_disk"]
        finally:
            services.stop()
    return found


def peer(binary: Path, tmp: Path, models: Path, names: tuple[str, ...], args) -> dict:
    found = {}
    extra = {"cache_prompt": True}
    for case in ("one", "two"):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        if case == "one":
            serve = ["-m", str(models / names[0]), "--alias", names[0]]
        else:  # the router names each model by its file name less ".gguf"
            serve = ["--models-dir", str(models), "--models-max", "1"]
            names = tuple(Path(name).stem for name in names)
        process = start_process(
            [str(binary), *serve, "--host", "127.0.0.1", "--port", str(port)]
            + ["-np", str(PARALLEL), "-c", str(PARALLEL * N_CTX), "-fa", "off", "-ngl", "0"],
            {},
            tmp / f"llama-server-{case}.log",
            f"{url}/health",
        )
        try:
            first_text(
                f"{url}/v1/completions",
                {"model": names[0], "prompt": "hi", "max_tokens": 1, **extra},
            )
            if case == "one":
                found["short"] = hits(url, names[0], "The capital of France", args.hits, extra)
                found["long"] = hits(url, names[0], filler(7, args.prompt_words), args.hits, extra)
                found["chat"] = chat(url, names[:1], args, extra)
            else:
                found["two"] = chat(url, names, args, extra)
        finally:
            stop_process(process)
    return found


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def report(a: dict, b: dict | None, model: str, args) -> str:
    def ms(value: float) -> str:
        return f"{value * 1000:.0f}"

    peer = b or {}
    lines = [
        "# Kept prompts: model-swap and llama-server, time to first token",
        "",
        f"`benchmarks/kvcache.py{' --quick' if args.quick else ''}`, {model}; model-swap "
        f"worker PARALLEL={PARALLEL} N_CTX={N_CTX} (default KV_CACHE_BYTES) through the store; "
        f"llama-server `-np {PARALLEL} -c {PARALLEL * N_CTX} -fa off`, `cache_prompt` on, "
        "default `--cache-ram`. The machine may have been shared (ratios are within this run)."
        + ("" if b else " llama-server was not found: model-swap only."),
        "",
        f"## Repeated prompt (streamed /v1/completions; median of {args.hits} hits)",
        "",
        "| prompt | model-swap ms | llama-server ms | ratio | target <= 1.1x |",
        "|---|---|---|---|---|",
    ]
    for key, name in (("short", "5 tokens"), ("long", f"{args.prompt_words} words (~300 tok)")):
        if key in peer:
            ratio = a[key] / peer[key]
            lines.append(
                f"| {name} | {ms(a[key])} | {ms(peer[key])} | {ratio:.2f}x | "
                f"{verdict(ratio <= 1.1)} |"
            )
        else:
            lines.append(f"| {name} | {ms(a[key])} | - | - | - |")
    for key, title, target in (
        ("chat", "One model", 1.2),
        ("two", "Two models at MAX_LOADED_MODELS=1 (llama-server: router, --models-max 1)", 0.5),
    ):
        lines += [
            "",
            f"## {title}: {args.conversations} conversations x {args.turns} turns, "
            f"{args.concurrency} at a time (TTFT p50 per turn)",
            "",
            f"| turn | model-swap ms | llama-server ms | ratio | target <= {target}x |",
            "|---|---|---|---|---|",
        ]
        for turn in range(args.turns):
            ours_p50 = percentile(a[key][turn], 50)
            if key in peer:
                theirs = percentile(peer[key][turn], 50)
                ratio = ours_p50 / theirs
                cells = f"{ms(theirs)} | {ratio:.2f}x | {verdict(ratio <= target)}"
            else:
                cells = "- | - | -"
            lines.append(f"| {turn + 1} | {ms(ours_p50)} | {cells} |")
        last, first = percentile(a[key][-1], 50), percentile(a[key][0], 50)
        if key == "chat":
            lines += [
                "",
                f"model-swap turn {args.turns} / turn 1: {last / first:.2f}x "
                f"(target <= 2x: {verdict(last / first <= 2)}).",
            ]
    memory = a["memory"]
    growth = memory["rss_peak"] - memory["rss_loaded"]
    bound = memory["kv_cache_bytes"] * 1.1
    lines += [
        "",
        "## Memory (model-swap worker, one model, over the repeated prompts and the chat)",
        "",
        f"RSS after loading {memory['rss_loaded'] / 2**20:.0f} MiB, peak "
        f"{memory['rss_peak'] / 2**20:.0f} MiB: growth {growth / 2**20:.0f} MiB against "
        f"KV_CACHE_BYTES {memory['kv_cache_bytes'] / 2**20:.0f} MiB + 10% "
        f"({verdict(growth <= bound)}); kept states in memory at the end "
        f"{memory['kept'] / 2**20:.1f} MiB. Saved on disk after the two-model run: "
        f"{a['kv_disk']['prompts']} states, {a['kv_disk']['bytes'] / 2**20:.1f} MiB, "
        f"{a['kv_disk']['reads']} read back.",
    ]
    return "\n".join(lines) + "\n"


def break_even(path: Path) -> str:
    """Restoring a sequence's state against evaluating its tokens, on one context."""
    import llama_cpp

    from inference_worker.batch import BatchScheduler, BatchStats
    from inference_worker.kv_state import read_state, write_state

    llm = llama_cpp.Llama(str(path), n_ctx=16, verbose=False)
    scheduler = BatchScheduler(llm, name="b", parallel=2, n_ctx_seq=N_CTX, stats=BatchStats())
    ctx, batch = scheduler._ctx, scheduler._batch  # idle loop: nothing else uses them
    memory = llama_cpp.llama_get_memory(ctx)
    lines = ["| tokens | evaluate ms | restore ms | state bytes |", "|---|---|---|---|"]
    for n in (4, 16, 64, 256, 1024):
        evals, restores = [], []
        for _ in range(3):
            llama_cpp.llama_memory_seq_rm(memory, 0, -1, -1)
            started = time.perf_counter()
            for start in range(0, n, 512):
                m = min(512, n - start)
                batch.n_tokens = m
                for i in range(m):
                    batch.token[i], batch.pos[i] = 100 + (start + i) % 1000, start + i
                    batch.n_seq_id[i], batch.seq_id[i][0] = 1, 0
                    batch.logits[i] = i == m - 1
                assert llama_cpp.llama_decode(ctx, batch) == 0
            evals.append(time.perf_counter() - started)
            data = read_state(ctx, 0)
            started = time.perf_counter()
            assert write_state(ctx, 1, data)
            restores.append(time.perf_counter() - started)
        lines.append(
            f"| {n} | {statistics.median(evals) * 1000:.2f} | "
            f"{statistics.median(restores) * 1000:.3f} | {len(data)} |"
        )
    scheduler.close()
    llm.close()
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model, small traffic")
    parser.add_argument("--hits", type=int, default=5)
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--prompt-words", type=int, default=240, help="~300 tokens on Gemma")
    parser.add_argument("--turn-words", type=int, default=115, help="~150 tokens on Gemma")
    parser.add_argument("--break-even", action="store_true", help="restore vs evaluate only")
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    args = parser.parse_args(argv)
    if args.quick:
        args.hits, args.conversations, args.turns = 2, 4, 3
        args.prompt_words, args.turn_words = 30, 20
    with tempfile.TemporaryDirectory(prefix="kvcache-") as tmp:
        tmp = Path(tmp)
        models, model = standalone_models(tmp, args.quick)
        if args.break_even:
            return emit(break_even(models / model), args.out)
        names = tuple(link_names(models, models / model, TWO))
        (models / model).unlink()  # the router serves every file in the directory
        binary = llama_server_bin()
        a = ours(tmp, models, names, args)
        print(json.dumps({"model-swap": a}), file=sys.stderr, flush=True)  # survives a kill
        b = peer(binary, tmp, models, names, args) if binary else None
    return emit(report(a, b, model, args), args.out)


if __name__ == "__main__":
    raise SystemExit(main())
