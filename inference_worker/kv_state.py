"""Copying one sequence's KV state out of a llama.cpp context and back
(``llama_state_seq_get_data`` / ``llama_state_seq_set_data``).

The bytes are llama.cpp's sequence state format (``LLAMA_STATE_SEQ_VERSION``):
they fit only a context of the same model with the same KV layout (streams,
cell types), which is why saved states are tagged (``inference_worker/kv_disk.py``).
Called from a batch scheduler's loop thread, or after it stopped.
"""

from __future__ import annotations

import ctypes
import logging

import llama_cpp

logger = logging.getLogger(__name__)

# What a saved state must match besides the model file (inference_worker/kv_disk.py).
STATE_FORMAT = f"seq-v{llama_cpp.LLAMA_STATE_SEQ_VERSION}/llama-cpp-python-{llama_cpp.__version__}"


def read_state(ctx, seq: int) -> bytearray | None:
    """Sequence ``seq``'s KV state, or None if llama.cpp could not write it."""
    size = llama_cpp.llama_state_seq_get_size(ctx, seq)
    if size <= 0:
        return None
    data = bytearray(size)
    written = llama_cpp.llama_state_seq_get_data(
        ctx, (ctypes.c_uint8 * size).from_buffer(data), size, seq
    )
    if written <= 0:
        logger.warning("llama.cpp could not copy out sequence %d's state", seq)
        return None
    del data[written:]
    return data


def write_state(ctx, seq: int, data: bytearray) -> bool:
    """Replace sequence ``seq``'s cells with ``data``; False (and ``seq`` empty) if llama.cpp
    refused it (a truncated or foreign state)."""
    size = len(data)
    read = llama_cpp.llama_state_seq_set_data(
        ctx, (ctypes.c_uint8 * size).from_buffer(data), size, seq
    )
    if read <= 0:
        llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(ctx), seq, -1, -1)
        return False
    return True
