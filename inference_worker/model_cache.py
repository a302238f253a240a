"""The worker's disk cache: model files in MODEL_CACHE_DIR.

Every name is validated with the shared model-name rule before it touches the
filesystem, so no path escapes the directory. Incoming files are streamed to a
hidden temporary file in the same directory and renamed into place only when
complete, so a failed or interrupted upload never leaves a partial file under
a model's name; leftover temporary files are removed at start-up.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from inference_worker.spliced import can_splice
from inference_worker.upload_intake import (
    GGUF_MAGIC,
    DigestMismatch,
    IncompleteUpload,
    Intake,
    NotGGUF,
    Readable,
    UploadRejected,
    take_buffered,
    take_spliced,
)
from model_swap.digest import file_digest, hasher
from model_swap.errors import cause
from model_swap.names import InvalidModelName, validate_model_name
from model_swap.progress import Progress, Transfers

logger = logging.getLogger(__name__)

TEMP_SUFFIX = ".part"

# Files a store on the same filesystem places in the cache directory itself (a reflink or
# kernel copy of its model file, never a hard link, see model_store_server/transport/link.py) before
# asking the worker to adopt them, and the probe files it proves the directory with. Both
# end in TEMP_SUFFIX, so a leftover is removed at the next start like a broken upload.
PLACED_NAME = re.compile(r"\.(link|probe)-[0-9a-f]{32}" + re.escape(TEMP_SUFFIX))


class NoSpace(Exception):
    """The cache's disk cannot hold the upload (checked up front, or it filled up midway)."""


_NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


@dataclass(frozen=True)
class CachedFile:
    name: str
    size: int
    digest: str | None = None  # "algorithm:hex" verified when it arrived; None if unknown


# Where a file's verified digest is kept: an extended attribute of the file itself, so it
# is renamed into place with the file and replaced with it (a new version never keeps an
# old version's digest), and survives a worker restart. It also records the file's size
# and mtime, so bytes rewritten in place later do not pass for the verified ones.
DIGEST_XATTR = "user.model_swap.digest"


@dataclass(frozen=True)
class Received:
    name: str
    nbytes: int
    seconds: float
    digest: str | None = None  # "algorithm:hex" of the kept file, when the sender announced one


def _stamp(path: Path) -> str:
    """Size and modification time: they change when the file's bytes are rewritten."""
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"


class ModelCache:
    """Model files on the worker's disk. Thread-safe: every operation is one atomic FS step."""

    def __init__(self, directory: Path):
        self._counter_lock = threading.Lock()
        self.uploads = 0  # completed uploads since start
        self.bytes_received = 0  # body bytes read since start, complete or not
        self.transfers = Transfers()  # uploads being received now
        self.directory = Path(directory).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        # Digests recorded this run, for filesystems without user extended attributes.
        self._digests: dict[str, str] = {}
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
                try:
                    if not entry.is_file():
                        continue
                    size = entry.stat().st_size
                except FileNotFoundError:  # deleted (evicted) since the listing
                    continue
                found.append(CachedFile(entry.name, size, self.digest(entry.name)))
        return sorted(found, key=lambda f: f.name)

    def digest(self, name: str) -> str | None:
        """The digest ``name`` was verified against when it arrived (None if never announced)."""
        path = self.path(name)
        try:
            digest, _, stamp = os.getxattr(path, DIGEST_XATTR).decode("ascii").partition(" ")
            # Written in place after it was verified (same inode, new bytes): not what was verified.
            return digest if stamp == _stamp(path) else None
        except OSError as err:
            if err.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                return self._digests.get(name)
            return None  # no digest attached: not a file this worker verified

    def _record_digest(self, tmp: Path, name: str, digest: str | None) -> None:
        """Attach ``digest`` to the verified temporary file before it is renamed into place."""
        self._digests.pop(name, None)
        if digest is None:
            return
        try:
            os.setxattr(tmp, DIGEST_XATTR, f"{digest} {_stamp(tmp)}".encode("ascii"))
        except OSError as err:
            logger.warning("could not record %s's digest on disk (%s); kept in memory", name, err)
        self._digests[name] = digest

    def receive(
        self,
        name: str,
        source: Readable,
        expected_size: int | None = None,
        expected_digest: str | None = None,
    ) -> Received:
        """Receive ``name`` as ``_receive`` does, counted in ``transfers`` while it runs
        (its progress is logged at most once per second and shown by ``GET /status``)."""
        progress = Progress(name, expected_size, what="receive", logger=logger)
        with self.transfers.track(progress):
            return self._receive(name, source, expected_size, expected_digest, progress)

    def _receive(
        self,
        name: str,
        source: Readable,
        expected_size: int | None,
        expected_digest: str | None,
        progress: Progress,
    ) -> Received:
        """Read ``source`` to its end into the cache as ``name``; the file appears only verified.

        ``source`` is any binary stream with ``readinto`` (a request body, a
        file, the RDMA ring); a broken stream (OSError or ValueError) is an
        IncompleteUpload. ``expected_digest`` is ``algorithm:hex`` as
        ``model_swap.digest.parse_digest`` returns it. Blocks until the stream
        ends. The first bytes must be the GGUF magic (checked before anything
        is kept). Raises UploadRejected, keeping nothing, when the data is not
        GGUF or its length or digest differs from what was announced, and
        NoSpace when the announced size exceeds the free disk (before
        writing) or the disk fills up. Thread-safe.

        A sized body of the front server is spliced from the socket into the
        file and hashed from a mapping of the file (``inference_worker.spliced``:
        each byte copied once); any other source is read into a few reused
        buffers by the calling thread while one thread hashes them and another
        writes them (``inference_worker.pipeline``).
        """
        target = self.path(name)
        if expected_size is not None and expected_size > self.free_bytes():
            raise NoSpace(
                f"{name} is {expected_size} bytes; the cache's disk has {self.free_bytes()} free"
            )
        algorithm = expected_digest.partition(":")[0] if expected_digest else None
        # The temporary name does not embed the model name: a 255-byte model
        # name plus a suffix would exceed the filesystem's name limit.
        tmp = self.directory / f".upload-{uuid.uuid4().hex}{TEMP_SUFFIX}"
        started = time.perf_counter()
        digest = hasher(algorithm) if algorithm else None
        intake = Intake(name, expected_size, self._count, progress)
        try:
            spliced = can_splice(source)
            with open(tmp, "w+b" if spliced else "wb", buffering=0 if spliced else -1) as out:
                if spliced:
                    take_spliced(source, out.fileno(), digest, intake)
                else:
                    take_buffered(source, out, digest, intake)
            written, head = intake.written, intake.head
            if expected_size is not None and written != expected_size:
                raise IncompleteUpload(
                    f"body ended after {written} of the announced {expected_size} bytes"
                )
            if head != GGUF_MAGIC:
                raise NotGGUF(f"{name} is not a GGUF file ({written} bytes)")
            received_digest = f"{algorithm}:{digest.hexdigest()}" if digest else None
            if received_digest != expected_digest:
                raise DigestMismatch(
                    f"the received {name} has digest {received_digest}, "
                    f"the sender announced {expected_digest}"
                )
            self._record_digest(tmp, name, received_digest)
            os.replace(tmp, target)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            if err.errno in _NO_SPACE_ERRNOS:
                raise NoSpace(
                    f"the cache's disk filled up while receiving {name}: {cause(err)}"
                ) from err
            raise
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        with self._counter_lock:
            self.uploads += 1
        return Received(name, written, time.perf_counter() - started, received_digest)

    def placed_path(self, placed: str) -> Path:
        """The path of a file a store placed in the directory (raises UploadRejected)."""
        if not PLACED_NAME.fullmatch(placed):
            raise UploadRejected(f"{placed!r} is not a name a store places files under")
        return self.directory / placed

    def adopt(
        self,
        name: str,
        placed: str,
        expected_size: int,
        expected_digest: str | None,
    ) -> Received:
        """Take the file a store placed in the directory as ``placed`` into the cache as ``name``.

        The file is verified exactly as an upload is (GGUF magic, the
        announced size and digest) and then renamed into place, so a cached
        name only ever holds a verified file; nothing is kept on any failure
        (UploadRejected). No byte is copied here: the store placed the file
        by reflink or a kernel-side copy. A file with another name (a hard
        link, say to the operator's file in MODELS_DIR) is refused: whoever
        rewrites that name in place would rewrite what this worker has
        memory-mapped. Blocks while hashing. Thread-safe.
        """
        target = self.path(name)
        source = self.placed_path(placed)
        started = time.perf_counter()
        try:
            try:
                with open(source, "rb") as f:
                    st = os.fstat(f.fileno())
                    head = f.read(len(GGUF_MAGIC))
            except FileNotFoundError:
                raise UploadRejected(f"no placed file {placed} in the cache directory") from None
            size = st.st_size
            if st.st_nlink != 1:
                raise UploadRejected(
                    f"the placed {name} is a hard link ({st.st_nlink} names): it would share "
                    "its bytes with a file that may be rewritten in place"
                )
            if head != GGUF_MAGIC:
                raise NotGGUF(f"{name} is not a GGUF file (bad magic bytes)")
            if size != expected_size:
                raise IncompleteUpload(
                    f"the placed {name} has {size} bytes, the sender announced {expected_size}"
                )
            digest = None
            if expected_digest is not None:
                digest = file_digest(source, expected_digest.partition(":")[0])
                if digest != expected_digest:
                    raise DigestMismatch(
                        f"the placed {name} has digest {digest}, "
                        f"the sender announced {expected_digest}"
                    )
            self._record_digest(source, name, digest)
            os.replace(source, target)
        except BaseException:
            source.unlink(missing_ok=True)
            raise
        with self._counter_lock:
            self.uploads += 1
        return Received(name, size, time.perf_counter() - started, digest)

    def read_probe(self, placed: str) -> bytes:
        """The first bytes of a probe file a store placed (raises UploadRejected)."""
        path = self.placed_path(placed)
        if not placed.startswith(".probe-"):
            raise UploadRejected(f"{placed} is not a probe file")
        try:
            with open(path, "rb") as f:
                return f.read(64)
        except FileNotFoundError:
            raise UploadRejected(f"no probe file {placed} in the cache directory") from None

    def _count(self, nbytes: int) -> None:
        with self._counter_lock:
            self.bytes_received += nbytes

    def delete(self, name: str) -> bool:
        """Remove a cached model; False if it was not there."""
        self._digests.pop(name, None)
        try:
            self.path(name).unlink()
        except FileNotFoundError:
            return False
        return True
