"""An upload written into its file by splice(2), and hashed from a mapping of what was written.

A sized request body of the front server can move its bytes from the socket
into a pipe and from the pipe into the file without passing through user
space (``model_swap.http_body.SizedBody.splice_into``): the kernel copies each
byte once, into the file's page cache, where ``recv`` plus ``write`` copy it
twice. The digest then reads the bytes where they landed: a thread maps each
written region of the file (read-only, ``mmap``) and feeds it to the hasher,
so hashing adds no copy either. Splicing and hashing run on two threads (both
release the GIL), the hash a few blocks behind at most.

The mapping covers only bytes this process has already written to its own
temporary file (a hidden name nobody else writes), so it never reaches past the
end of the file. On a filesystem that cannot splice into files the bytes are
copied out of the pipe and written instead, and where files cannot be mapped
the regions are read back to be hashed (same result, one copy more each).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
from collections.abc import Callable

from inference_worker.pipeline import Stage

PIPE_BYTES = 1024 * 1024  # the pipe's capacity asked for (fs.pipe-max-size's default)
HASH_BLOCK = 8 * 1024 * 1024  # bytes hashed per mapping (a multiple of the page size)
HASH_DEPTH = 4  # written blocks that may wait for the hash thread
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)


def can_splice(source: object) -> bool:
    """Whether ``source`` can move its bytes into a pipe (``splice_into``) on this system."""
    return hasattr(os, "splice") and callable(getattr(source, "splice_into", None))


class SplicedFile:
    """Bytes written at increasing offsets of the file ``fd`` (opened for reading and
    writing), through the pipe ``pipe`` (its write end, ``pipe_bytes`` long); each
    region is hashed by ``digest`` (if any) once written, in order.

    Use as a context manager: leaving normally waits until every byte is hashed
    and re-raises the hash thread's error; leaving with an exception stops it.
    A full disk is the OSError of ``write`` or ``drain``.
    """

    def __init__(self, fd: int, digest: Callable[[memoryview], object] | None):
        self._fd = fd
        self._pipe_read, self.pipe = os.pipe()
        with contextlib.suppress(OSError):  # over the user's pipe quota: the default works
            fcntl.fcntl(self.pipe, _F_SETPIPE_SZ, PIPE_BYTES)
        self.pipe_bytes = fcntl.fcntl(self.pipe, _F_GETPIPE_SZ)
        self.written = 0
        self._hashed = 0
        self._copying = False
        self._digest = digest
        self._stage = Stage(self._hash, depth=HASH_DEPTH, name="upload-hash") if digest else None

    def write(self, data: memoryview) -> None:
        """Write ``data`` (bytes the caller holds) at the end of what was written."""
        done = 0
        while done < len(data):
            done += os.pwrite(self._fd, data[done:], self.written + done)
        self._advance(done)

    def drain(self, count: int) -> None:
        """Move the ``count`` bytes waiting in the pipe to the end of the file."""
        done = 0
        while done < count:
            offset = self.written + done
            if not self._copying:
                try:
                    done += os.splice(self._pipe_read, self._fd, count - done, offset_dst=offset)
                    continue
                except OSError as err:
                    if err.errno != errno.EINVAL:  # EINVAL: this filesystem cannot splice
                        raise
                    self._copying = True
            data = os.read(self._pipe_read, count - done)
            os.pwrite(self._fd, data, offset)  # a regular file takes all of it, or raises
            done += len(data)
        self._advance(count)

    def _advance(self, count: int) -> None:
        self.written += count
        while self.written - self._hashed >= HASH_BLOCK:
            self._submit(HASH_BLOCK)

    def _submit(self, length: int) -> None:
        if self._stage is not None:
            self._stage.submit((self._hashed, length))
        self._hashed += length

    def _hash(self, region: tuple[int, int]) -> None:
        offset, length = region
        try:
            view = mmap.mmap(self._fd, length, mmap.MAP_SHARED, mmap.PROT_READ, offset=offset)
        except OSError:  # a filesystem that cannot map files: read the region back
            self._hash_read(offset, length)
            return
        with view:
            self._digest(view)

    def _hash_read(self, offset: int, length: int) -> None:
        buffer = memoryview(bytearray(min(length, 1024 * 1024)))
        end = offset + length
        while offset < end:
            count = os.preadv(self._fd, [buffer[: end - offset]], offset)
            if not count:
                raise OSError(errno.EIO, "the upload's file is shorter than what was written")
            self._digest(buffer[:count])
            offset += count

    def __enter__(self) -> SplicedFile:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self._stage is None:
                return
            if exc_type is not None:
                self._stage.abort()
                return
            try:
                if self.written > self._hashed:
                    self._submit(self.written - self._hashed)
                self._stage.finish()
            except BaseException:
                self._stage.abort()
                raise
        finally:
            os.close(self._pipe_read)
            os.close(self.pipe)
