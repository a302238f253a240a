"""The one thread that runs every multi-threaded llama_decode of the process.

llama.cpp's CPU backend (built with OpenMP, as llama-cpp-python's wheel is) runs a
step of N > 1 threads as an OpenMP parallel region, and waits at an OpenMP barrier
after each operation of the graph (hundreds per token). GNU libgomp keeps one pool
of worker threads per thread that starts a region, and counts every pool's threads:
once they outnumber the CPUs, every barrier wait of every pool spins 100 times
instead of 300,000 and then sleeps in the kernel (``GOMP_SPINCOUNT``; libgomp's
``do_spin``). With each resident model's batch loop starting its own regions, two
models that each ran one two-thread step on a two-CPU machine put every later step
of every model on that slow path. Measured in process on Gemma 3 270M with two
threads per step (``benchmarks/batch_steps.py``, "OpenMP pools"): a one-token step
waited in the kernel 0-1 times with one resident model and about 280 times with
three.

So every decode of more than one thread runs here, on one thread for the whole
process: one OpenMP pool whatever the number of resident models, and the pool's
worker is the same one whichever model stepped last. A step of one thread starts
no region and stays on its batch loop's thread, so one-thread steps of different
models still run side by side.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import llama_cpp

# False: each batch loop runs its own multi-threaded decodes (one OpenMP pool per resident
# model), as before this module; benchmarks/batch_steps.py flips it to measure both.
ONE_POOL = True

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None


def _wide() -> ThreadPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:  # one worker thread, never ended: one OpenMP pool
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wide-decode")
        return _executor


def decode(ctx, batch, threads: int) -> int:
    """``llama_decode(ctx, batch)`` for a context set to ``threads`` threads: on the
    process's wide-decode thread when that is more than one, else on the caller's."""
    if threads <= 1 or not ONE_POOL:
        return llama_cpp.llama_decode(ctx, batch)
    return _wide().submit(llama_cpp.llama_decode, ctx, batch).result()
