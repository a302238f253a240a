"""The store's model files: lookup, names, versions (digests) and memory footprints.

Errors say what the client can do: a missing file is a 404, a file the store
cannot read (permissions, I/O) is a 500 naming the request id (the cause is
logged), never a 404.
"""

from __future__ import annotations

import logging
import struct
import threading
from pathlib import Path

from gguf import GGUF_MAGIC

from model_store_server.digests import DigestCache, PerVersionCache
from model_swap.errors import ApiError, NotFound
from model_swap.footprint import estimate
from model_swap.logs import current_request_id
from model_swap.names import InvalidModelName, validate_model_name

logger = logging.getLogger(__name__)


class StoreFileError(ApiError):
    """A model file exists but cannot be read (500; the cause is in the store's log)."""

    status = 500
    type = "store_file_error"


class ModelUnloadable(ApiError):
    """The worker cannot load this version of the model file (422; retrying cannot help)."""

    status = 422
    type = "model_unloadable"

    def __init__(self, message: str):
        super().__init__(message, headers={"x-should-retry": "false"})


def unreadable(model: str, err: OSError) -> ApiError:
    """404 if ``model``'s file is gone, else a logged 500 with the request id."""
    if isinstance(err, FileNotFoundError):
        return NotFound(f"model {model} not found in the store")
    request_id = current_request_id() or "-"
    logger.error("could not read the file of %s (request %s): %r", model, request_id, err)
    error = StoreFileError(
        f"model {model} could not be read from the store (request id {request_id})"
    )
    error.headers["X-Request-Id"] = request_id
    return error


class ModelFiles:
    """MODELS_DIR: which models exist, each file's digest and memory estimate. Thread-safe."""

    def __init__(self, models_dir: Path):
        self.models_dir = Path(models_dir)
        self.digests = DigestCache()
        self.footprints = PerVersionCache()
        # Why a file version cannot be loaded, by digest: refused at once from then on.
        self._unloadable: dict[str, str] = {}
        self._lock = threading.Lock()

    def path(self, model: str) -> Path:
        """The store's file for ``model``; NotFound if MODELS_DIR has no such model."""
        path = self.models_dir / model
        if not path.is_file():
            raise NotFound(f"model {model} not found in the store")
        return path

    def available(self) -> list[str]:
        """Model names in MODELS_DIR (names only; no file is read)."""
        if not self.models_dir.is_dir():
            return []
        names = []
        for entry in self.models_dir.iterdir():
            try:
                validate_model_name(entry.name)
            except InvalidModelName:
                continue
            if entry.is_file():
                names.append(entry.name)
        return sorted(names)

    def version(self, path: Path) -> str:
        """The digest of the file as it is now (hashed once per file version); known
        before anything is decided, so a file that cannot be read changes nothing."""
        try:
            return self.digests.digest(path)
        except OSError as err:
            raise unreadable(path.name, err) from err

    def check_loadable(self, path: Path, version: str) -> None:
        """Raise ModelUnloadable, before anything is evicted for it, for a file that is not
        GGUF (its first 8 bytes: magic and a version llama.cpp reads) or a version the
        worker already failed to load. Cheap: no more than the file's first 8 bytes."""
        with self._lock:
            known = self._unloadable.get(version)
        if known is not None:
            raise ModelUnloadable(known)
        try:
            with open(path, "rb") as f:
                head = f.read(8)
        except OSError as err:
            raise unreadable(path.name, err) from err
        if len(head) < 8 or struct.unpack("<I", head[:4])[0] != GGUF_MAGIC:
            reason = f"model {path.name} is not a GGUF file"
        elif struct.unpack("<I", head[4:])[0] not in (2, 3):
            reason = f"model {path.name} has a GGUF version llama.cpp does not read"
        else:
            return
        self.remember_unloadable(version, reason)
        raise ModelUnloadable(reason)

    def remember_unloadable(self, version: str, reason: str) -> None:
        """This file version cannot be loaded: later requests for it are refused at once."""
        with self._lock:
            self._unloadable[version] = reason
        logger.warning("%s (refused from now on, until the file changes)", reason)

    def size(self, path: Path) -> int:
        try:
            return path.stat().st_size
        except OSError as err:
            raise unreadable(path.name, err) from err

    def footprint(self, path: Path, n_ctx: int | None, n_seq: int = 1) -> int:
        """Estimated memory of ``path`` once loaded with ``n_ctx`` for each of the worker's
        ``n_seq`` (PARALLEL) sequences (bytes), once per file version; the file size if its
        metadata cannot be read."""
        n_ctx = n_ctx or 2048
        try:
            return self.footprints.get(
                path, (n_ctx, n_seq), lambda: estimate(path, n_ctx, n_seq=n_seq).total_bytes
            )
        except Exception as err:  # not a readable GGUF: the worker will refuse to load it
            logger.warning("could not estimate the memory of %s: %r", path.name, err)
            return self.size(path)
