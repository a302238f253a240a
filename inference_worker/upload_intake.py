"""An upload as it arrives: checked block by block, then written and hashed.

``Intake`` checks each block (the GGUF magic first, then the announced size)
and counts it; ``take_spliced`` moves a sized body of the front server from
the socket into the file (``inference_worker.spliced``), ``take_buffered``
reads any other source into reused buffers that are hashed and written in the
background (``inference_worker.pipeline``). The caller
(``inference_worker.model_cache``) verifies the whole and renames it into place.
"""

from __future__ import annotations

import logging
from typing import Protocol

from inference_worker.pipeline import BufferPipeline
from inference_worker.spliced import SplicedFile
from model_swap.errors import cause
from model_swap.progress import Progress

# An upload is read into BUFFERS reused buffers of BLOCK_BYTES each (bounds memory).
BLOCK_BYTES = 4 * 1024 * 1024
BUFFERS = 6

logger = logging.getLogger("inference_worker.model_cache")

GGUF_MAGIC = b"GGUF"


class UploadRejected(Exception):
    """An upload was refused; nothing was kept."""


class IncompleteUpload(UploadRejected):
    """The body ended before the announced size, ran past it, or broke off."""


class DigestMismatch(UploadRejected):
    """The received bytes do not have the digest the sender announced."""


class NotGGUF(UploadRejected):
    """The body does not start with the GGUF magic bytes."""


class Readable(Protocol):
    def readinto(self, buffer: memoryview, /) -> int | None: ...


class Intake:
    """What an upload has brought so far: checked block by block as it arrives."""

    def __init__(self, name: str, expected_size: int | None, count, progress: Progress):
        self.name, self.expected_size = name, expected_size
        self._count, self._progress = count, progress
        self.written = 0
        self.head = b""

    def took(self, block: memoryview | None, count: int) -> None:
        """``count`` more bytes arrived (``block`` holds them, needed until the magic is in)."""
        if len(self.head) < len(GGUF_MAGIC):
            self.head += bytes(block[: min(count, len(GGUF_MAGIC) - len(self.head))])
            if not GGUF_MAGIC.startswith(self.head):
                raise NotGGUF(f"{self.name} is not a GGUF file (bad magic bytes)")
        self.written += count
        self._count(count)
        self._progress.advance(count)
        if self.expected_size is not None and self.written > self.expected_size:
            raise IncompleteUpload(f"body is longer than the announced {self.expected_size} bytes")


def _broke_off(name: str, err: BaseException) -> IncompleteUpload:
    logger.info("upload of %s broke off: %r", name, err)
    return IncompleteUpload(f"body broke off: {cause(err)}")


def read_block(source: Readable, buffer: memoryview, name: str) -> int:
    """``source.readinto(buffer)``; a broken stream is an IncompleteUpload."""
    try:
        return source.readinto(buffer) or 0
    except (OSError, ValueError) as err:  # broken framing, client gone
        raise _broke_off(name, err) from err


def take_buffered(source: Readable, out, digest, intake: Intake) -> None:
    """Read ``source`` into reused buffers, hashed and written (``out.write``) in the background."""
    with BufferPipeline(
        out.write, digest.update if digest else None, BUFFERS, BLOCK_BYTES
    ) as pipeline:
        while True:
            buffer = pipeline.take()
            if not (count := read_block(source, buffer, intake.name)):
                return
            intake.took(buffer, count)
            pipeline.submit(buffer, count)


def take_spliced(source, fd: int, digest, intake: Intake) -> None:
    """Splice ``source`` (``splice_into``) into the file ``fd`` (read and write), hashed
    from a mapping of the file; the first bytes are read, for the magic."""
    with SplicedFile(fd, digest.update if digest else None) as sink:
        first = memoryview(bytearray(64 * 1024))
        while len(intake.head) < len(GGUF_MAGIC):  # the magic is checked in user space
            if not (count := read_block(source, first, intake.name)):
                return
            intake.took(first, count)
            sink.write(first[:count])
        while True:
            try:
                count = source.splice_into(sink.pipe, sink.pipe_bytes)
            except (OSError, ValueError) as err:
                raise _broke_off(intake.name, err) from err
            if not count:
                return
            intake.took(None, count)
            sink.drain(count)
