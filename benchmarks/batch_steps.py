"""One llama_decode step, timed by its shape, layout and thread count (no server).

    uv run python benchmarks/batch_steps.py                 # Gemma 3 270M
    uv run python benchmarks/batch_steps.py --quick         # a tiny model, fewer repeats
    uv run python benchmarks/batch_steps.py --load 2        # with 2 spinning processes beside it
    uv run python benchmarks/batch_steps.py --out benchmarks/BATCH_STEPS.md

The measurements behind two choices of ``inference_worker/batch.py``:

- layout: four sequences decoding one token each, in the batch orders the
  scheduler could build ([0,1,2,3] compact and in slot order, [0,2,1,3],
  [3,2,1,0], [0,2,4,6] after out-of-order finishes), with one KV stream per
  sequence (what the worker runs) and with llama.cpp's unified KV cache;
- threads (``inference_worker/threads.py``): a one-token step, steps of 2, 4
  and 8 sequences, and prompt chunks of 32 and 256 tokens at 1..N threads;
  one-token steps of 1 and 8 sequences at 1..N threads beside one other process
  that uses 0-80% of a CPU (where a CPU stops counting as spare);
- two resident tiny models in one engine: a hit (8 greedy tokens) repeated on
  one model against hits alternating between the two, with the worker's thread
  rule;
- OpenMP pools (``inference_worker/decode_thread.py``): two-thread one-token steps
  on Gemma with one resident model and with three (each stepped once), when every
  multi-threaded decode runs on one thread (the worker) and when each model's loop
  runs its own (before): ms per step and the times the decoding thread slept in
  the kernel during it (voluntary context switches: OpenMP barrier waits that
  stopped spinning).

Each figure is the median of ``--repeats`` steps in ms, every sequence holding
a 64-token prompt; the step's tokens are removed after each timing so every
repeat sees the same cache. ``--load N`` starts N busy-looping processes for
the run (the "under load" column of docs/performance.md). The machine's other
work is not controlled: say whether it was busy when quoting a figure.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import llama_cpp
from llama_cpp import _internals

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import standalone_models  # noqa: E402

PROMPT = 64
SLOTS = 8


class Steps:
    """A context of SLOTS sequences on ``llm``, each filled with a PROMPT-token prompt."""

    def __init__(self, llm, unified: bool):
        params = llama_cpp.llama_context_default_params()
        self.n_ctx_seq = 2048  # the worker's default N_CTX
        params.n_ctx = SLOTS * self.n_ctx_seq
        params.n_batch = params.n_ubatch = 512
        params.n_seq_max = SLOTS
        params.kv_unified = unified
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        params.no_perf = True
        self.context = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
        self.ctx = self.context.ctx
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(512, 0, 1)
        self.tokens = llm.tokenize(b"Once upon a time " * 120, add_bos=True)[:512]
        for slot in range(SLOTS):
            self._decode([(slot, pos, self.tokens[pos]) for pos in range(PROMPT)], threads=1)

    def _decode(self, entries, threads: int) -> float:
        batch = self.batch
        for i, (slot, pos, token) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
            # Logits for each sequence's last token, as the scheduler asks.
            last = i + 1 == len(entries) or entries[i + 1][0] != slot
            batch.seq_id[i][0], batch.logits[i] = slot, last
        batch.n_tokens = len(entries)
        llama_cpp.llama_set_n_threads(self.ctx, threads, threads)
        started = time.perf_counter()
        if llama_cpp.llama_decode(self.ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        return time.perf_counter() - started

    def time(self, slots: list[int], tokens: int, threads: int, repeats: int) -> float:
        """Median ms of one step: ``tokens`` new tokens for each of ``slots``, in that order."""
        entries = [
            (slot, PROMPT + i, self.tokens[PROMPT + i]) for slot in slots for i in range(tokens)
        ]
        times = []
        for _ in range(repeats + 1):
            times.append(self._decode(entries, threads))
            for slot in slots:
                llama_cpp.llama_memory_seq_rm(self.memory, slot, PROMPT, -1)
        return statistics.median(times[1:]) * 1000

    def time_move(self, threads: int, repeats: int) -> float:
        """Median ms of a one-token step on a sequence just moved to another slot: the
        scheduler's compaction (llama.cpp copies the KV stream at the next decode)."""
        entries = [(SLOTS - 2, PROMPT, self.tokens[PROMPT])]
        times = []
        for _ in range(repeats + 1):
            llama_cpp.llama_memory_seq_cp(self.memory, SLOTS - 1, SLOTS - 2, -1, -1)
            times.append(self._decode(entries, threads))
            llama_cpp.llama_memory_seq_rm(self.memory, SLOTS - 2, PROMPT, -1)
        return statistics.median(times[1:]) * 1000

    def close(self) -> None:
        llama_cpp.llama_batch_free(self.batch)
        self.context.close()


def spin() -> None:
    while True:
        pass


LAYOUTS = ([0, 1, 2, 3], [0, 2, 1, 3], [3, 2, 1, 0], [0, 2, 4, 6])
SHAPES = (  # (label, sequences, tokens each)
    ("1 sequence, 1 token", 1, 1),
    ("2 sequences, 1 token each", 2, 1),
    ("4 sequences, 1 token each", 4, 1),
    ("8 sequences, 1 token each", 8, 1),
    ("prompt chunk, 32 tokens", 1, 32),
    ("prompt chunk, 256 tokens", 1, 256),
)


# Shares of one CPU another process uses beside the light-load steps.
DUTIES = (0.0, 0.15, 0.3, 0.5, 0.8)
LIGHT_SHAPES = (("1 sequence, 1 token", 1), ("8 sequences, 1 token each", 8))
PERIOD = 0.01  # seconds of one busy-then-asleep cycle


def burn(duty: float) -> None:
    """Busy ``duty`` of every PERIOD, asleep the rest: a process using that share of a CPU
    (a store relaying a stream, a client reading it)."""
    while True:
        started = time.perf_counter()
        while time.perf_counter() - started < duty * PERIOD:
            pass
        time.sleep((1 - duty) * PERIOD)


def light_load(path: Path, args) -> list[str]:
    """One-token steps at 1..N threads beside one process using part of a CPU: where the
    thread rule's line between a spare CPU and a busy one lies."""
    llm = llama_cpp.Llama(str(path), n_ctx=16, verbose=False)
    threads = list(range(1, len(os.sched_getaffinity(0)) + 1))
    steps = Steps(llm, False)
    lines = [
        "",
        "## Threads beside a light load (ms per step)",
        "",
        "One other process busy for a share of every 10 ms, asleep the rest; medians of "
        f"{args.repeats * 3} steps.",
        "",
        "| other process's share of a CPU | step | "
        + " | ".join(f"{t} thread(s)" for t in threads)
        + " |",
        "|---|---|" + "---|" * len(threads),
    ]
    try:
        for duty in DUTIES:
            other = multiprocessing.Process(target=burn, args=(duty,), daemon=True)
            if duty:
                other.start()
            try:
                for label, seqs in LIGHT_SHAPES:
                    cells = [steps.time(list(range(seqs)), 1, t, args.repeats * 3) for t in threads]
                    lines.append(
                        f"| {duty:.2f} | {label} | "
                        + " | ".join(f"{ms:.1f}" for ms in cells)
                        + " |"
                    )
                    print(lines[-1], flush=True)
            finally:
                if duty:
                    other.kill()
                    other.join()
    finally:
        steps.close()
        llm.close()
    return lines


def measure(path: Path, args) -> list[str]:
    llm = llama_cpp.Llama(str(path), n_ctx=16, verbose=False)
    cpus = len(os.sched_getaffinity(0))
    threads = list(range(1, cpus + 1))
    # One thread: the number of passes is what the orders change, and one thread is the
    # steadiest figure on a shared machine.
    lines = ["## Layouts: 4 sequences, 1 token each, 1 thread (ms per step)", ""]
    lines += ["| batch order | one KV stream per sequence | unified KV |", "|---|---|---|"]
    per_stream, unified = Steps(llm, False), Steps(llm, True)
    try:
        for order in LAYOUTS:
            split = per_stream.time(order, 1, 1, args.repeats)
            joint = unified.time(order, 1, 1, args.repeats)
            lines.append(f"| {order} | {split:.1f} | {joint:.1f} |")
            print(lines[-1], flush=True)  # a long run on a busy machine keeps what it measured
        plain = per_stream.time([SLOTS - 2], 1, 1, args.repeats)
        moved = per_stream.time_move(1, args.repeats)
        lines += [
            "",
            f"Compaction (1 thread): a one-token step {plain:.1f} ms; the same step right after "
            f"its sequence moved to another slot (its KV stream of {per_stream.n_ctx_seq} cells "
            f"copied first) {moved:.1f} ms.",
        ]
        print(lines[-1], flush=True)
        lines += ["", "## Threads (ms per step)", ""]
        lines += ["| step | " + " | ".join(f"{t} thread(s)" for t in threads) + " |"]
        lines.append("|---|" + "---|" * len(threads))
        for label, seqs, tokens in SHAPES:
            cells = [per_stream.time(list(range(seqs)), tokens, t, args.repeats) for t in threads]
            lines.append(f"| {label} | " + " | ".join(f"{ms:.1f}" for ms in cells) + " |")
            print(lines[-1], flush=True)
    finally:
        per_stream.close()
        unified.close()
        llm.close()
    return lines


def alternation(tmp: Path, repeats: int) -> list[str]:
    """Hits repeated on one resident tiny model against hits alternating between two."""
    from inference_worker.engine import Engine
    from inference_worker.generation import Job
    from model_swap.generation import Sampling
    from model_swap.tiny_models import write_tiny_model

    engine = Engine(n_ctx=256, parallel=4)
    names = ["tiny-alt-a.gguf", "tiny-alt-b.gguf"]
    for name in names:
        engine.load(name, write_tiny_model(tmp / name))
    job = Job(prompt="hello world", max_tokens=8, sampling=Sampling(temperature=0.0))

    def hit(name: str) -> float:
        started = time.perf_counter()
        generation = engine.begin(name, job)
        try:
            "".join(generation.tokens())
        finally:
            generation.close()
        return time.perf_counter() - started

    repeated, alternating = [], []
    for _ in range(repeats * 4):
        repeated += [hit(names[0]), hit(names[0])]
        alternating += [hit(names[0]), hit(names[1])]
    for name in names:
        engine.unload(name)
    one, two = statistics.median(repeated) * 1000, statistics.median(alternating) * 1000
    return [
        "",
        f"## Two resident tiny models: a hit of 8 tokens (median of {len(repeated)})",
        "",
        "| repeated on one model | alternating A, B, A, B | difference |",
        "|---|---|---|",
        f"| {one:.2f} ms | {two:.2f} ms | {two - one:+.2f} ms |",
    ]


def omp_pools(path: Path, repeats: int) -> list[str]:
    """Two-thread steps with one resident model and with three: one OpenMP pool or one per
    loop, each in a fresh process (libgomp counts the pools of every thread that ever
    started a region, such as this one's in ``measure``)."""
    if (os.cpu_count() or 1) < 2:
        return ["", "## OpenMP pools: skipped (one CPU)"]
    rows = []
    spawn = multiprocessing.get_context("spawn")
    for one_pool in (True, False):
        with spawn.Pool(1) as pool:
            one, three = pool.apply(_omp_hits, (path, repeats, one_pool))
        label = "one thread for every multi-threaded decode" if one_pool else "each loop its own"
        rows.append(
            f"| {label} | {one[0]:.1f} ms, {one[1]:.0f} | {three[0]:.1f} ms, {three[1]:.0f} |"
        )
    return [
        "",
        f"## OpenMP pools: a two-thread one-token step (median of {repeats}; ms, kernel waits)",
        "",
        "| decodes run on | 1 resident model | 3 resident models |",
        "|---|---|---|",
        *rows,
    ]


def _omp_hits(path: Path, repeats: int, one_pool: bool) -> tuple:
    """(ms, kernel waits) of a hit's step on one model, with it alone and with three resident."""
    import resource

    from inference_worker import decode_thread
    from inference_worker.engine import Engine
    from inference_worker.generation import Job
    from model_swap.generation import Sampling

    steps: list[tuple[float, int]] = []
    real = llama_cpp.llama_decode

    def timed(ctx, batch):  # in the thread that runs the decode
        before, started = resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw, time.perf_counter()
        status = real(ctx, batch)
        waits = resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw - before
        steps.append((time.perf_counter() - started, waits))
        return status

    llama_cpp.llama_decode = timed
    decode_thread.ONE_POOL = one_pool
    engine = Engine(n_ctx=2048, parallel=4, n_threads=2)
    job = Job(prompt="Once upon a time", max_tokens=1, sampling=Sampling(temperature=0.0))

    def hits(name: str, count: int) -> tuple[float, float]:
        del steps[:]
        for _ in range(count):
            generation = engine.begin(name, job)
            try:
                "".join(generation.tokens())
            finally:
                generation.close()
        return statistics.median(s[0] for s in steps) * 1000, statistics.median(s[1] for s in steps)

    names = ["omp-a.gguf", "omp-b.gguf", "omp-c.gguf"]
    engine.load(names[0], path)
    hits(names[0], 2)
    one = hits(names[0], repeats)
    for name in names[1:]:
        engine.load(name, path)
        hits(name, 1)
    three = hits(names[0], repeats)
    for name in names:
        engine.unload(name)
    return one, three


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model, 5 repeats")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--load", type=int, default=0, help="busy-looping processes beside it")
    parser.add_argument("--model", type=Path, help="a .gguf file instead of Gemma 3 270M")
    parser.add_argument("--out", type=Path, help="also write the tables to this markdown file")
    args = parser.parse_args()
    if args.quick:
        args.repeats = min(args.repeats, 5)
    spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(args.load)]
    for process in spinners:
        process.start()
    try:
        with tempfile.TemporaryDirectory(prefix="model-swap-steps-") as name:
            if args.model:
                path = args.model
            else:
                models, model = standalone_models(Path(name), args.quick)
                path = models / model
            load = os.getloadavg()[0]
            lines = measure(path, args) + light_load(path, args)
            lines += alternation(Path(name), args.repeats)
            lines += omp_pools(path, args.repeats)
    finally:
        for process in spinners:
            process.kill()
    load_flag = f" --load {args.load}" if args.load else ""
    header = [
        "# One decode step by shape, layout and threads",
        "",
        f"Produced by `uv run python benchmarks/batch_steps.py{load_flag}` with {path.name} "
        f"on {os.cpu_count()} CPU cores; {args.load} busy-looping processes "
        f"beside it; 1-minute load average {load:.2f} at the start (other work not controlled). "
        f"Medians of {args.repeats} steps.",
        "",
    ]
    out = "\n".join(header + lines) + "\n"
    print(out)
    if args.out:
        args.out.write_text(out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
