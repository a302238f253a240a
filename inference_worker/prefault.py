"""The memory of a model's KV cache, faulted in on another thread while llama.cpp parses the
model file.

Creating a serving context allocates the KV cache (``kv_streams`` x N_CTX cells: 332
MiB for Gemma 3 270M at PARALLEL=8) and llama.cpp clears it at once, touching every
page. Where memory freed a moment ago is expensive to touch again, that clearing is
most of a swap: in a virtual machine with free page reporting (Firecracker, QEMU's
virtio-balloon), the pages the previous model's context gave back are returned to the
host within seconds, and faulting them in again goes through the hypervisor. Measured
on this project's 2-core VM (``page_reporting`` on, Gemma 3 270M, PARALLEL=8): creating
the context took 0.32-0.74 s when the memory had been free for 1-2.5 s, 0.04-0.05 s
when it was freed just before.

So while llama.cpp parses the file (0.4-0.5 s of one core for Gemma 3 270M, most of it
the 262,144-token vocabulary), ``Prefault`` maps an anonymous region of the KV cache's
size on its own thread and writes it, page by page; right before the context is
created ``release`` stops it and unmaps the region. The pages it faulted in are free
and still resident when llama.cpp asks for its KV cache, so clearing it costs what it
costs on bare metal. Peak memory is unchanged: the region is given back before the
context (which takes at least as much) is created. Without free page reporting it only
moves the kernel's page zeroing onto the other core.

The worker uses it only where the KV cache lives in host memory (``wanted``); a
failure here never fails a load (logged, and the load goes on without it).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import mmap
import sys
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)

# Bytes written per call: release() waits for at most one chunk.
CHUNK = 32 * 1024 * 1024
_MAP_FAILED = ctypes.c_void_p(-1).value


def wanted(*, gpu_offload: bool, n_gpu_layers: int, platform: str = sys.platform) -> bool:
    """Whether a context's KV cache is in host memory, so faulting it in early pays: on
    Linux, with no GPU offload (a CPU build, or N_GPU_LAYERS=0). Pure."""
    return platform.startswith("linux") and not (gpu_offload and n_gpu_layers != 0)


@functools.cache
def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc


class Prefault:
    """One load's region: started at once on a thread of its own; ``release`` once."""

    def __init__(self, size_of: Callable[[], int]):
        self.size = 0  # bytes mapped
        self.touched = 0  # of those, written before release
        self._address: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(size_of,), name="kv-prefault", daemon=True
        )
        self._thread.start()

    def _run(self, size_of: Callable[[], int]) -> None:
        try:
            size = size_of()  # on this thread: it may read the model file's header
            if size <= 0:
                return
            libc = _libc()
            prot = mmap.PROT_READ | mmap.PROT_WRITE
            flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
            address = libc.mmap(None, size, prot, flags, -1, 0)
            if address in (None, _MAP_FAILED):
                logger.warning("no KV prefault: mmap of %d bytes failed", size)
                return
            self._address, self.size = address, size
            # Huge pages where the kernel's policy is madvise, as glibc asks for llama.cpp's
            # buffers (inference_worker/huge_pages.py); refused: 4 KiB pages, still fine.
            libc.madvise(address, size, getattr(mmap, "MADV_HUGEPAGE", 14))
            while self.touched < size and not self._stop.is_set():
                step = min(CHUNK, size - self.touched)
                ctypes.memset(address + self.touched, 0, step)  # the GIL is released
                self.touched += step
        except Exception:  # never fail a load over an optimization
            logger.exception("KV prefault failed; the load goes on without it")

    def release(self) -> None:
        """Stop writing (at most one more chunk: the region is mapped whatever the time) and
        give the region back."""
        self._stop.set()
        self._thread.join()
        if self._address is not None:
            _libc().munmap(self._address, self.size)
            self._address = None
