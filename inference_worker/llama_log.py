"""llama.cpp's own log messages, captured so a load can say why it failed and what it allocated.

llama.cpp reports the reason a model fails to load (bad magic, truncated
tensor data, unknown architecture...) and the size of every buffer it
allocates (weights, KV cache, output, compute) only through its log callback.
This module installs one callback for the process that forwards llama.cpp's
warnings and errors to Python logging and lets the engine collect, for one
load, the errors and the buffer sizes logged on the loading thread (llama.cpp
logs synchronously on the thread that calls it, so loads on other threads, of
other engines in the same process, do not mix in).
"""

from __future__ import annotations

import ctypes
import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import llama_cpp

logger = logging.getLogger("llama_cpp")

# ggml_log_level in the llama.cpp this project builds: 1 DEBUG, 2 INFO, 3 WARN, 4 ERROR, 5 CONT.
INFO, WARN, ERROR, CONT = 2, 3, 4, 5
_LEVELS = {WARN: logging.WARNING, ERROR: logging.ERROR}
MIB = 1024 * 1024
# "load_tensors: CPU_Mapped model buffer size = 235.16 MiB", "llama_kv_cache: CPU KV buffer
# size = 6.00 MiB", "llama_context: CPU  output buffer size = 1.00 MiB", "sched_reserve: CPU
# compute buffer size = 514.50 MiB" (INFO level; one line per backend buffer).
_BUFFER = re.compile(r"\b(model|KV|output|compute) buffer size =\s*([0-9.]+) MiB")

_lock = threading.Lock()
_collectors: list[LoadLog] = []
_last_level = 0


@dataclass
class LoadLog:
    """What llama.cpp logged on one thread while a ``collect`` block ran."""

    thread: int
    errors: list[str] = field(default_factory=list)
    # Sum of the buffer sizes llama.cpp reported (it logs MiB with two decimals).
    buffer_bytes: int = 0
    model_bytes: int = 0  # of which the weights' buffers


@llama_cpp.llama_log_callback
def _callback(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    global _last_level
    if level == CONT:  # continues the previous message
        level = _last_level
    _last_level = level
    if level not in (INFO, WARN, ERROR):
        return
    message = text.decode("utf-8", errors="replace").strip()
    if not message:
        return
    if level in _LEVELS:
        logger.log(_LEVELS[level], "%s", message)
    sizes = _BUFFER.search(message) if level == INFO else None
    if level != ERROR and sizes is None:
        return
    thread = threading.get_ident()
    with _lock:
        for collected in _collectors:
            if collected.thread != thread:
                continue
            if level == ERROR:
                collected.errors.append(message)
            elif sizes is not None:
                size = round(float(sizes.group(2)) * MIB)
                collected.buffer_bytes += size
                if sizes.group(1) == "model":
                    collected.model_bytes += size


def install() -> None:
    """Route llama.cpp's log through this module (idempotent; call before loading)."""
    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))


@contextmanager
def collect() -> Iterator[LoadLog]:
    """Collect the errors and buffer sizes llama.cpp logs on this thread while the block runs."""
    collected = LoadLog(threading.get_ident())
    with _lock:
        _collectors.append(collected)
    try:
        yield collected
    finally:
        with _lock:
            _collectors.remove(collected)
