"""Content digests of model files, written ``algorithm:hex`` (``blake3:5f1e...``).

Two algorithms, both 256-bit: ``blake3``, the transfer-integrity digest of
every push (several GB/s per core, multithreaded over a whole file, so
verifying a push costs a fraction of moving it) and ``sha256``, kept for
provenance and for clients that announce it (``X-Model-Sha256``). Both
services, the tests and the benchmarks hash through this module.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import blake3

TRANSFER_ALGORITHM = "blake3"
ALGORITHMS = ("blake3", "sha256")
_HEX = re.compile(r"^[0-9a-f]{64}$")
_FILE_BLOCK = 4 * 1024 * 1024


class InvalidDigest(ValueError):
    """Not ``algorithm:hex`` with a known algorithm and 64 hexadecimal characters."""


def parse_digest(text: object) -> str:
    """``text`` normalised (lower case) if it is ``blake3:<64 hex>`` or ``sha256:<64 hex>``."""
    if not isinstance(text, str):
        raise InvalidDigest("a digest must be a string like blake3:<64 hex digits>")
    algorithm, _, value = text.strip().lower().partition(":")
    if algorithm not in ALGORITHMS:
        raise InvalidDigest(
            f"unknown digest algorithm {algorithm!r} (use one of {', '.join(ALGORITHMS)})"
        )
    if not _HEX.match(value):
        raise InvalidDigest(f"a {algorithm} digest must be 64 hexadecimal characters")
    return f"{algorithm}:{value}"


def hasher(algorithm: str):
    """A fresh incremental hasher (``update``, ``hexdigest``) for ``algorithm``.

    Single-threaded: a receiving worker already keeps its cores busy reading
    and writing (blake3's thread pool would compete with them); ``update``
    releases the GIL.
    """
    if algorithm == "blake3":
        return blake3.blake3()
    if algorithm == "sha256":
        return hashlib.sha256()
    raise InvalidDigest(f"unknown digest algorithm {algorithm!r}")


def file_digest(path: str | os.PathLike, algorithm: str = TRANSFER_ALGORITHM) -> str:
    """``algorithm:hex`` of the file at ``path`` (blocks while reading it)."""
    if algorithm == "blake3":
        h = blake3.blake3(max_threads=blake3.blake3.AUTO)  # a whole file: all cores
        h.update_mmap(os.fspath(path))
        return f"blake3:{h.hexdigest()}"
    h = hasher(algorithm)
    with open(path, "rb") as source:
        while block := source.read(_FILE_BLOCK):
            h.update(block)
    return f"{algorithm}:{h.hexdigest()}"


def file_sha256(path: str | os.PathLike) -> str:
    """The bare hex sha256 of the file at ``path``."""
    return file_digest(Path(path), "sha256").partition(":")[2]
