"""One box, no copies: placing a model file in the worker's cache directory directly.

When the store and the worker run on one machine (the quick start, and most
users), pushing a model through a loopback socket stores it twice and makes
its first use wait for the copy. ``LinkTransport`` (``TRANSPORT=auto``, the
default) first proves that the worker's cache directory is the one it sees:
the worker reports the directory and its filesystem (``GET /status``:
``model_cache_dir``, ``model_cache_dev``), the store writes a probe file
there and the worker reads it back (``POST /cache_probe``). Then a push is a
hard link of the model file into that directory under a temporary name
(a reflink, or a kernel-side ``copy_file_range``, where a link is refused),
and ``POST /adopt_model`` asks the worker to verify it exactly as an upload
(size, GGUF magic, digest) and rename it into place. Anywhere else (another
machine, another filesystem, a directory the store cannot write) every push
goes over HTTP as before.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import secrets
import threading
import time
import uuid
from pathlib import Path

from model_store_server.transport import HttpTransport, PushResult, Transport
from model_store_server.worker_client import WorkerClient, WorkerError, WorkerUnavailable
from model_swap.progress import current_progress

logger = logging.getLogger(__name__)

# Linux's FICLONE ioctl (_IOW(0x94, 9, int)): a copy-on-write clone (btrfs, XFS, bcachefs).
FICLONE = 0x40049409
# Errors of os.link that mean "not here" rather than "broken": try the next way.
_LINK_REFUSED = (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.EACCES, errno.ENOTSUP, errno.ENOSYS)


class PlacementRefused(OSError):
    """No way to place the file in the directory without sending its bytes."""


def place_file(source: Path, target: Path) -> str:
    """Make ``target`` hold ``source``'s bytes without a copy through user space.

    Returns how: ``link`` (same inode), ``reflink`` (a copy-on-write clone) or
    ``copy_file_range`` (the kernel copies, no bytes through this process).
    Raises PlacementRefused when none works (``target`` is then absent).
    """
    try:
        os.link(source, target)
        return "link"
    except OSError as err:
        if err.errno not in _LINK_REFUSED:
            raise
        reason = err
    try:
        with open(source, "rb") as src, open(target, "wb") as dst:
            try:
                fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
                return "reflink"
            except OSError:
                pass
            size = os.fstat(src.fileno()).st_size
            done = 0
            while done < size:
                step = os.copy_file_range(src.fileno(), dst.fileno(), size - done, done, done)
                if step == 0:
                    break
                done += step
            if done != size:
                raise PlacementRefused(f"{source} changed size while it was placed")
        return "copy_file_range"
    except OSError as err:
        target.unlink(missing_ok=True)
        if isinstance(err, PlacementRefused):
            raise
        where = target.parent
        raise PlacementRefused(f"cannot place {source} in {where}: {reason}; {err}") from err


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
        logger.info("the worker's cache %s is on this filesystem: placing files by link", directory)
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
