"""llama.cpp's own log messages, captured so a failed load can say why.

llama.cpp reports the reason a model fails to load (bad magic, truncated
tensor data, unknown architecture...) only through its log callback. This
module installs one callback for the process that forwards llama.cpp's
warnings and errors to Python logging and lets the engine collect the errors
raised during one load.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import llama_cpp

logger = logging.getLogger("llama_cpp")

# ggml_log_level in the llama.cpp this project builds: 1 DEBUG, 2 INFO, 3 WARN, 4 ERROR, 5 CONT.
WARN, ERROR, CONT = 3, 4, 5
_LEVELS = {WARN: logging.WARNING, ERROR: logging.ERROR}
_lock = threading.Lock()
_collectors: list[list[str]] = []
_last_level = 0


@llama_cpp.llama_log_callback
def _callback(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    global _last_level
    if level == CONT:  # continues the previous message
        level = _last_level
    _last_level = level
    if level not in _LEVELS:
        return
    message = text.decode("utf-8", errors="replace").strip()
    if not message:
        return
    logger.log(_LEVELS[level], "%s", message)
    if level == ERROR:
        with _lock:
            for collected in _collectors:
                collected.append(message)


def install() -> None:
    """Route llama.cpp's log through this module (idempotent; call before loading)."""
    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))


@contextmanager
def collect_errors() -> Iterator[list[str]]:
    """Collect llama.cpp error messages logged while the block runs."""
    collected: list[str] = []
    with _lock:
        _collectors.append(collected)
    try:
        yield collected
    finally:
        with _lock:
            _collectors.remove(collected)
