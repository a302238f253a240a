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
from pathlib import Path

from model_swap.digest import TRANSFER_ALGORITHM, file_digest


class DigestCache:
    """Digests of files by version. Thread-safe; concurrent requests for one file hash it once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._digests: dict[tuple, str] = {}
        self._computing: dict[tuple, threading.Lock] = {}

    @staticmethod
    def _version(path: Path) -> tuple:
        st = os.stat(path)
        return (str(path), st.st_ino, st.st_size, st.st_mtime_ns)

    def digest(self, path: Path, algorithm: str = TRANSFER_ALGORITHM) -> str:
        """``algorithm:hex`` of ``path`` as it is now (blocks while hashing a new version)."""
        key = (*self._version(path), algorithm)
        with self._lock:
            if key in self._digests:
                return self._digests[key]
            gate = self._computing.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                if key in self._digests:
                    return self._digests[key]
            value = file_digest(path, algorithm)
            with self._lock:
                # Forget older versions of the same path.
                for old in [k for k in self._digests if k[0] == key[0] and k[1:4] != key[1:4]]:
                    del self._digests[old]
                self._digests[key] = value
                self._computing.pop(key, None)
            return value

    def sha256(self, path: Path) -> str:
        """The bare hex sha256 of ``path`` as it is now."""
        return self.digest(path, "sha256").partition(":")[2]
