"""The worker's disk cache: model files in MODEL_CACHE_DIR.

Every name is validated with the shared model-name rule before it touches the
filesystem, so no path escapes the directory. Incoming files are streamed to a
hidden temporary file in the same directory and renamed into place only when
complete, so a failed or interrupted upload never leaves a partial file under
a model's name; leftover temporary files are removed at start-up.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from inference_worker.pipeline import Stage
from model_swap.names import InvalidModelName, validate_model_name

CHUNK_BYTES = 4 * 1024 * 1024
# Blocks that may wait for the writer or the hasher (bounds memory: depth x block size).
PIPELINE_DEPTH = 4

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


class NoSpace(Exception):
    """The cache's disk cannot hold the upload (checked up front, or it filled up midway)."""


_NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def read_blocks(body: BinaryIO, size: int = CHUNK_BYTES) -> Iterator[memoryview]:
    """Blocks of a readable stream, each in a fresh buffer; a broken stream raises
    IncompleteUpload.

    Reads with ``readinto`` into a fixed-size view: Werkzeug's chunked-body reader
    assigns short reads into the caller's buffer, which would silently resize a
    plain bytearray (and corrupt memory in ``RawIOBase.read``) when a sender
    disconnects mid-chunk; a memoryview refuses that with an error instead.
    """
    while True:
        buffer = memoryview(bytearray(size))
        try:
            count = body.readinto(buffer)
        except (OSError, ValueError) as err:  # broken framing, client gone, short chunk
            raise IncompleteUpload(f"body broke off: {err}") from err
        if not count:
            return
        yield buffer[:count]


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
        for cached in self.files():
            if not self._looks_like_gguf(self.directory / cached.name):
                (self.directory / cached.name).unlink(missing_ok=True)
                logger.warning("removed %s from the cache: not a GGUF file", cached.name)

    @staticmethod
    def _looks_like_gguf(path: Path) -> bool:
        with open(path, "rb") as f:
            return f.read(len(GGUF_MAGIC)) == GGUF_MAGIC

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.directory).free

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
        from what was announced, and NoSpace when the announced size exceeds
        the free disk (before writing) or the disk fills up. Thread-safe.

        Blocks are hashed and written on background threads while the next one
        is read, so the producer must not reuse a block's memory after yielding it.
        """
        target = self.path(name)
        if expected_sha256 is not None:
            expected_sha256 = expected_sha256.lower()
        if expected_size is not None and expected_size > self.free_bytes():
            raise NoSpace(
                f"{name} is {expected_size} bytes; the cache's disk has {self.free_bytes()} free"
            )
        # The temporary name does not embed the model name: a 255-byte model
        # name plus a suffix would exceed the filesystem's name limit.
        tmp = self.directory / f".upload-{uuid.uuid4().hex}{TEMP_SUFFIX}"
        started = time.perf_counter()
        written = 0
        digest = hashlib.sha256() if expected_sha256 else None
        head = b""
        stages: list[Stage] = []
        try:
            with open(tmp, "wb") as out:
                try:
                    stages.append(Stage(out.write, depth=PIPELINE_DEPTH, name="upload-write"))
                    if digest is not None:
                        stages.append(
                            Stage(digest.update, depth=PIPELINE_DEPTH, name="upload-hash")
                        )
                    for block in blocks:
                        if not block:
                            continue
                        if len(head) < len(GGUF_MAGIC):
                            head += bytes(block[: len(GGUF_MAGIC) - len(head)])
                            if not GGUF_MAGIC.startswith(head):
                                raise NotGGUF(f"{name} is not a GGUF file (bad magic bytes)")
                        for stage in stages:
                            stage.submit(block)
                        written += len(block)
                        self._count(len(block))
                        if expected_size is not None and written > expected_size:
                            raise IncompleteUpload(
                                f"body is longer than the announced {expected_size} bytes"
                            )
                    while stages:
                        stages.pop().finish()
                except BaseException:
                    # Stop the writer and hasher before the file is closed under them.
                    for stage in stages:
                        stage.abort()
                    raise
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
        except OSError as err:
            tmp.unlink(missing_ok=True)
            if err.errno in _NO_SPACE_ERRNOS:
                raise NoSpace(f"the cache's disk filled up while receiving {name}: {err}") from err
            raise
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
