"""One box, no copies through a socket: placing a model file in the worker's cache directly.

When the store and the worker run on one machine (the quick start, and most
users), pushing a model through a loopback socket makes its first use wait
for the copy. ``LinkTransport`` (``TRANSPORT=auto``, the default) first
proves that the worker's cache directory is the one it sees: the worker
reports the directory and its filesystem (``GET /status``:
``model_cache_dir``, ``model_cache_dev``), the store writes a probe file
there and the worker reads it back (``POST /cache_probe``). Then a push
places the model file in that directory under a temporary name, as a
reflink (a copy-on-write clone: no second copy on disk, btrfs, XFS,
bcachefs) or else a kernel-side ``copy_file_range`` (no bytes through
this process), and ``POST /adopt_model`` asks the worker to verify it
exactly as an upload (size, GGUF magic, digest) and rename it into place.

Never a hard link: a link is the operator's file itself, and ``cp`` over
a model in MODELS_DIR (or an in-place edit) would rewrite what the worker
has memory-mapped (SIGBUS, or another model's bytes mid-generation). A
clone or a copy is the worker's own inode: the operator's writes never
reach it, and the store places the new version on the next request.
Anywhere else (another machine, another filesystem, a directory the store
cannot write) every push goes over HTTP as before.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import threading
import time
import uuid
from pathlib import Path

from model_store_server.transport.http import HttpTransport, PushResult, Transport
from model_store_server.worker_client import (
    SourceChanged,
    WorkerClient,
    WorkerError,
    WorkerUnavailable,
)
from model_swap.progress import current_progress

logger = logging.getLogger(__name__)

# Linux's FICLONE ioctl (_IOW(0x94, 9, int)): a copy-on-write clone (btrfs, XFS, bcachefs).
FICLONE = 0x40049409


class PlacementRefused(OSError):
    """No way to place the file in the directory without sending its bytes."""


def _version(st: os.stat_result) -> tuple:
    """What changes when a file's bytes are rewritten (ctime too: ``rsync --inplace`` or
    ``touch -r`` can put the old mtime back, nobody can put back the ctime)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def place_file(source: Path, target: Path) -> str:
    """Make ``target`` a new file holding ``source``'s bytes, without a copy through user
    space, never sharing ``source``'s inode.

    Returns how: ``reflink`` (a copy-on-write clone) or ``copy_file_range``
    (the kernel copies). Raises SourceChanged if ``source`` was written
    while it was placed, PlacementRefused when neither way works here
    (``target`` is absent after any failure). FileNotFoundError: ``source``
    or the directory is gone.
    """
    try:
        with open(source, "rb") as src, open(target, "xb") as dst:
            before = _version(os.fstat(src.fileno()))
            how = _clone_or_copy(src.fileno(), dst.fileno(), before[2])
            if _version(os.fstat(src.fileno())) != before:
                raise SourceChanged(f"{source} was written while it was placed")
        return how
    except FileNotFoundError:
        target.unlink(missing_ok=True)
        raise
    except OSError as err:
        target.unlink(missing_ok=True)
        if isinstance(err, SourceChanged | PlacementRefused):
            raise
        raise PlacementRefused(f"cannot place {source} in {target.parent}: {err}") from err


def _clone_or_copy(src: int, dst: int, size: int) -> str:
    try:
        fcntl.ioctl(dst, FICLONE, src)
        return "reflink"
    except OSError:
        pass  # no copy-on-write clones on this filesystem: the kernel copies
    done = 0
    while done < size:
        step = os.copy_file_range(src, dst, size - done, done, done)
        if step == 0:
            raise SourceChanged("the file became shorter while it was placed")
        done += step
    return "copy_file_range"


class LinkTransport(Transport):
    """Places files in the worker's cache directory when it is this machine's; else HTTP.

    The probe runs before the first push and again after a placement fails
    (the worker may have restarted elsewhere). Thread-safe.
    """

    name = "auto"  # what /status reports; a placed file's PushResult says "link"

    def __init__(self, client: WorkerClient, fallback: HttpTransport):
        self._client = client
        self._fallback = fallback
        self._lock = threading.Lock()
        self._directory: Path | None = None
        self._probed = False

    def shared_directory(self) -> Path | None:
        """The worker's cache directory if this store can place files in it, else None."""
        with self._lock:
            if not self._probed:
                self._directory = self._probe()
                self._probed = True
            return self._directory

    def forget(self) -> None:
        """Probe again before the next push."""
        with self._lock:
            self._probed = False

    def _probe(self) -> Path | None:
        try:
            report = self._client.cache_location()
        except (WorkerUnavailable, WorkerError) as err:
            logger.info("cannot ask the worker where its cache is (%s); pushing over HTTP", err)
            return None
        if report is None:
            return None
        directory, device = report
        try:
            if Path(directory).stat().st_dev != device:
                raise FileNotFoundError(directory)
            token = secrets.token_hex(16)
            probe = Path(directory) / f".probe-{uuid.uuid4().hex}.part"
            probe.write_text(token)
        except OSError as err:
            logger.info(
                "the worker's cache %s is not on this machine's filesystem (%s): "
                "pushing model files over HTTP",
                directory,
                err,
            )
            return None
        try:
            seen = self._client.read_probe(probe.name)
        except (WorkerUnavailable, WorkerError) as err:
            logger.info("the worker did not read the probe in %s (%s): using HTTP", directory, err)
            return None
        finally:
            probe.unlink(missing_ok=True)
        if seen != token:
            logger.info("%s here is not the worker's cache directory: using HTTP", directory)
            return None
        logger.info(
            "the worker's cache %s is on this filesystem: placing files by reflink or kernel copy",
            directory,
        )
        return Path(directory)

    def push(self, model: str, path: Path, *, digest: str, load: bool) -> PushResult:
        directory = self.shared_directory()
        if directory is None:
            return self._fallback.push(model, path, digest=digest, load=load)
        placed = directory / f".link-{uuid.uuid4().hex}.part"
        started = time.perf_counter()
        try:
            how = place_file(path, placed)
        except PlacementRefused as err:
            logger.warning("%s; pushing %s over HTTP", err, model)
            self.forget()
            return self._fallback.push(model, path, digest=digest, load=load)
        except FileNotFoundError:
            placed.unlink(missing_ok=True)
            if not directory.is_dir():  # the worker's directory went away: probe again
                self.forget()
                return self._fallback.push(model, path, digest=digest, load=load)
            raise  # the model file itself is gone: the caller's "could not be read"
        size = placed.stat().st_size
        try:
            answer = self._client.adopt(model, placed.name, size, digest, load=load)
        except BaseException:
            placed.unlink(missing_ok=True)  # the worker keeps nothing on failure; nor do we
            raise
        seconds = time.perf_counter() - started
        progress = current_progress()
        if progress is not None:
            progress.set_done(size)
        logger.info("placed %s in the worker's cache by %s (%d bytes)", model, how, size)
        return PushResult(
            model,
            size,
            seconds,
            "link",
            answer.get("load_seconds"),
            answer.get("estimated_bytes"),
        )
