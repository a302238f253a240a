"""Digests of the store's model files, computed once per file version and algorithm.

A file version is identified by its path, device, inode, size, modification
time and change time (``rsync --inplace`` or ``touch -r`` can put an old
mtime back, nobody can put back a ctime): replacing or rewriting a model,
even in place at the same size, gives it a new digest; an unchanged file is
never hashed twice. A value computed while the file was being written is
computed again, never kept for a version it does not describe.

Pushes announce the transfer digest (``blake3:<hex>``, see ``model_swap.digest``)
so the worker can verify what it received before keeping it; ``sha256`` stays
available for provenance.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from model_swap.digest import TRANSFER_ALGORITHM, file_digest

T = TypeVar("T")

# How many times a value is computed while its file keeps changing under it.
ATTEMPTS = 3


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
        return (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def get(self, path: Path, key: object, compute: Callable[[], T]) -> T:
        """``compute()`` for ``path`` as it is now and ``key`` (blocks while computing).

        If the file changes while ``compute`` runs, it runs again on the new
        version (a few times); a value that still describes no single version
        is returned but not kept."""
        for _ in range(ATTEMPTS):
            value, kept = self._get(self._version(path), path, key, compute)
            if kept:
                return value
        return value

    def _get(self, version: tuple, path: Path, key: object, compute: Callable[[], T]):
        entry = (*version, key)
        with self._lock:
            if entry in self._values:
                return self._values[entry], True
            gate = self._computing.setdefault(entry, threading.Lock())
        with gate:
            with self._lock:
                if entry in self._values:
                    return self._values[entry], True
            try:
                value = compute()
                stable = self._version(path) == version
            finally:
                with self._lock:
                    self._computing.pop(entry, None)
            if not stable:
                return value, False
            with self._lock:
                # Forget older versions of the same path.
                for old in [k for k in self._values if k[0] == entry[0] and k[1:-1] != version[1:]]:
                    del self._values[old]
                self._values[entry] = value
            return value, True


class DigestCache(PerVersionCache):
    """Digests of files by version: a model file is never hashed twice."""

    def digest(self, path: Path, algorithm: str = TRANSFER_ALGORITHM) -> str:
        """``algorithm:hex`` of ``path`` as it is now (blocks while hashing a new version)."""
        return self.get(path, algorithm, lambda: file_digest(path, algorithm))

    def sha256(self, path: Path) -> str:
        """The bare hex sha256 of ``path`` as it is now."""
        return self.digest(path, "sha256").partition(":")[2]
