"""Digests of the store's model files, computed once per file version and algorithm.

A file version is identified by its path, inode, size and modification time:
replacing or rewriting a model gives it a new digest, an unchanged file is
never hashed twice. Pushes announce the transfer digest (``blake3:<hex>``, see
``model_swap.digest``) so the worker can verify what it received before
keeping it; ``sha256`` stays available for provenance.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from model_swap.digest import TRANSFER_ALGORITHM, file_digest

T = TypeVar("T")


class PerVersionCache:
    """Values computed from a file, once per file version (and key). Thread-safe;
    concurrent requests for one version compute it once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[tuple, object] = {}
        self._computing: dict[tuple, threading.Lock] = {}

    @staticmethod
    def _version(path: Path) -> tuple:
        st = os.stat(path)
        return (str(path), st.st_ino, st.st_size, st.st_mtime_ns)

    def get(self, path: Path, key: object, compute: Callable[[], T]) -> T:
        """``compute()`` for ``path`` as it is now and ``key`` (blocks while computing)."""
        entry = (*self._version(path), key)
        with self._lock:
            if entry in self._values:
                return self._values[entry]
            gate = self._computing.setdefault(entry, threading.Lock())
        with gate:
            with self._lock:
                if entry in self._values:
                    return self._values[entry]
            value = compute()
            with self._lock:
                # Forget older versions of the same path.
                for old in [k for k in self._values if k[0] == entry[0] and k[1:4] != entry[1:4]]:
                    del self._values[old]
                self._values[entry] = value
                self._computing.pop(entry, None)
            return value


class DigestCache(PerVersionCache):
    """Digests of files by version: a model file is never hashed twice."""

    def digest(self, path: Path, algorithm: str = TRANSFER_ALGORITHM) -> str:
        """``algorithm:hex`` of ``path`` as it is now (blocks while hashing a new version)."""
        return self.get(path, algorithm, lambda: file_digest(path, algorithm))

    def sha256(self, path: Path) -> str:
        """The bare hex sha256 of ``path`` as it is now."""
        return self.digest(path, "sha256").partition(":")[2]
