"""The worker's disk cache: model files in MODEL_CACHE_DIR.

Every name is validated with the shared model-name rule before it touches the
filesystem, so no path escapes the directory. Incoming files are streamed to a
hidden temporary file in the same directory and renamed into place only when
complete, so a failed or interrupted upload never leaves a partial file under
a model's name; leftover temporary files are removed at start-up.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from model_swap.names import InvalidModelName, validate_model_name

CHUNK_BYTES = 1024 * 1024

logger = logging.getLogger(__name__)

TEMP_SUFFIX = ".part"


GGUF_MAGIC = b"GGUF"


class UploadRejected(Exception):
    """An upload was refused; nothing was kept."""


class IncompleteUpload(UploadRejected):
    """The body ended before the announced size, ran past it, or broke off."""


class DigestMismatch(UploadRejected):
    """The received bytes do not have the sha256 the sender announced."""


class NotGGUF(UploadRejected):
    """The body does not start with the GGUF magic bytes."""


def read_blocks(body: BinaryIO, size: int = CHUNK_BYTES) -> Iterator[bytes]:
    """Blocks of a readable stream; a broken stream raises IncompleteUpload."""
    while True:
        try:
            block = body.read(size)
        except OSError as err:  # broken chunked framing, client gone
            raise IncompleteUpload(f"body broke off: {err}") from err
        if not block:
            return
        yield block


@dataclass(frozen=True)
class CachedFile:
    name: str
    size: int


@dataclass(frozen=True)
class Received:
    name: str
    nbytes: int
    seconds: float
    sha256: str | None = None  # of the kept file, when the sender announced one


class ModelCache:
    """Model files on the worker's disk. Thread-safe: every operation is one atomic FS step."""

    def __init__(self, directory: Path):
        self._counter_lock = threading.Lock()
        self.uploads = 0  # completed uploads since start
        self.bytes_received = 0  # body bytes read since start, complete or not
        self.directory = Path(directory).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        for leftover in self.directory.glob(f".*{TEMP_SUFFIX}"):
            leftover.unlink(missing_ok=True)
            logger.info("removed leftover temporary file %s", leftover.name)

    def path(self, name: str) -> Path:
        """The path a valid model name is stored at (raises InvalidModelName)."""
        return self.directory / validate_model_name(name)

    def contains(self, name: str) -> bool:
        return self.path(name).is_file()

    def files(self) -> list[CachedFile]:
        """The cached models, by name."""
        found = []
        with os.scandir(self.directory) as entries:
            for entry in entries:
                try:
                    validate_model_name(entry.name)
                except InvalidModelName:
                    continue
                if entry.is_file():
                    found.append(CachedFile(entry.name, entry.stat().st_size))
        return sorted(found, key=lambda f: f.name)

    def receive(
        self,
        name: str,
        blocks: Iterable[bytes | memoryview],
        expected_size: int | None = None,
        expected_sha256: str | None = None,
    ) -> Received:
        """Write ``blocks`` into the cache under ``name``; the file appears only when verified.

        Blocks until the iterable ends. The first bytes must be the GGUF magic
        (checked before anything is kept). Raises UploadRejected, keeping
        nothing, when the data is not GGUF or its length or sha256 differs
        from what was announced. Thread-safe.
        """
        target = self.path(name)
        if expected_sha256 is not None:
            expected_sha256 = expected_sha256.lower()
        # The temporary name does not embed the model name: a 255-byte model
        # name plus a suffix would exceed the filesystem's name limit.
        tmp = self.directory / f".upload-{uuid.uuid4().hex}{TEMP_SUFFIX}"
        started = time.perf_counter()
        written = 0
        digest = hashlib.sha256() if expected_sha256 else None
        head = b""
        try:
            with open(tmp, "wb") as out:
                for block in blocks:
                    if not block:
                        continue
                    if len(head) < len(GGUF_MAGIC):
                        head += bytes(block[: len(GGUF_MAGIC) - len(head)])
                        if not GGUF_MAGIC.startswith(head):
                            raise NotGGUF(f"{name} is not a GGUF file (bad magic bytes)")
                    out.write(block)
                    if digest is not None:
                        digest.update(block)
                    written += len(block)
                    self._count(len(block))
                    if expected_size is not None and written > expected_size:
                        raise IncompleteUpload(
                            f"body is longer than the announced {expected_size} bytes"
                        )
            if expected_size is not None and written != expected_size:
                raise IncompleteUpload(
                    f"body ended after {written} of the announced {expected_size} bytes"
                )
            if head != GGUF_MAGIC:
                raise NotGGUF(f"{name} is not a GGUF file ({written} bytes)")
            if digest is not None and digest.hexdigest() != expected_sha256:
                raise DigestMismatch(
                    f"sha256 of the received {name} is {digest.hexdigest()}, "
                    f"the sender announced {expected_sha256}"
                )
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        with self._counter_lock:
            self.uploads += 1
        return Received(
            name, written, time.perf_counter() - started, digest.hexdigest() if digest else None
        )

    def _count(self, nbytes: int) -> None:
        with self._counter_lock:
            self.bytes_received += nbytes

    def delete(self, name: str) -> bool:
        """Remove a cached model; False if it was not there."""
        try:
            self.path(name).unlink()
        except FileNotFoundError:
            return False
        return True
