"""sha256 digests of the store's model files, computed once per file version.

A file version is identified by its path, inode, size and modification time:
replacing or rewriting a model gives it a new digest, an unchanged file is
never hashed twice. Pushes announce the digest so the worker can verify what
it received before keeping it.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

CHUNK_BYTES = 4 * 1024 * 1024


class DigestCache:
    """sha256 of files by version. Thread-safe; concurrent requests for one file hash it once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._digests: dict[tuple, str] = {}
        self._computing: dict[tuple, threading.Lock] = {}

    @staticmethod
    def _version(path: Path) -> tuple:
        st = os.stat(path)
        return (str(path), st.st_ino, st.st_size, st.st_mtime_ns)

    def sha256(self, path: Path) -> str:
        """The hex sha256 of ``path`` as it is now (blocks while hashing a new version)."""
        key = self._version(path)
        with self._lock:
            if key in self._digests:
                return self._digests[key]
            gate = self._computing.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                if key in self._digests:
                    return self._digests[key]
            digest = hashlib.sha256()
            with open(path, "rb") as source:
                while block := source.read(CHUNK_BYTES):
                    digest.update(block)
            value = digest.hexdigest()
            with self._lock:
                # Forget older versions of the same path.
                for old in [k for k in self._digests if k[0] == key[0]]:
                    del self._digests[old]
                self._digests[key] = value
                self._computing.pop(key, None)
            return value
