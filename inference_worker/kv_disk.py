"""Kept prompt states on disk, so a conversation outlives its model's swap.

When a model leaves memory (unload, eviction, an idle sweep, ``keep_alive`` 0)
its kept prompt states (``inference_worker/kv_cache.py``) and its free slots'
cells are written to ``MODEL_CACHE_DIR/.kv/<model>/``, beside the model file.
Each file carries a tag: the model file's version (its verified digest, else
its size, mtime and inode), the context parameters the state was taken with
and llama.cpp's state format (``inference_worker/kv_state.py``); a state
is only ever offered to a context whose tag is equal. When the model is loaded
again its states are indexed (no bytes read) and read back the first time a
prompt extends one.

Files are written atomically (a temporary name, then a rename) and checked
by a CRC-32 when read: a truncated or corrupt file is logged and deleted, and
the prompt is evaluated instead. States of other versions are deleted when the
model is loaded or saved, all of a model's states go with its file, and the
oldest (by last use) go when ``KV_DISK_BYTES`` needs room. The ``.kv``
directory is hidden, so the model cache never lists it as a model file.
Thread-safe.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import struct
import threading
import uuid
import zlib
from pathlib import Path

from inference_worker.kv_cache import KeptPrompt, PromptCache
from inference_worker.kv_state import STATE_FORMAT

logger = logging.getLogger(__name__)

MAGIC = b"MSKVSTATE1\n"
SUFFIX = ".kv"
_LENGTH = struct.Struct("<I")


class KvDisk:
    """Saved prompt states under ``directory`` (the model cache's ``.kv``), at most
    ``budget`` bytes of them (0: none saved). ``version`` gives a model file's version."""

    def __init__(self, directory: Path, budget: int, version=None):
        self.directory = Path(directory)
        self.budget = budget
        self._version = version or (lambda path: None)
        self._lock = threading.Lock()
        self.reads = 0  # states read back from disk since start
        self.discarded = 0  # unreadable or stale files deleted
        for leftover in self.directory.glob("*/.*.part"):  # made when first needed
            leftover.unlink(missing_ok=True)

    def tag(self, path: Path, context: dict) -> dict:
        """What a state of the model at ``path`` taken in ``context`` must match."""
        st = path.stat()
        version = self._version(path) or f"stamp:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
        return {"version": version, "format": STATE_FORMAT, **context}

    def _folder(self, name: str) -> Path:
        return self.directory / name

    def index(self, name: str, tag: dict, cache: PromptCache) -> int:
        """Make ``name``'s saved states with ``tag`` known to ``cache``; delete the others.
        Returns how many it indexed."""
        if not self.budget:
            return 0
        found = 0
        for file in sorted(self._files(name), key=_mtime):
            header = _read_header(file)
            if header is None or header.get("tag") != tag:
                why = "unreadable" if header is None else "of another model version or context"
                self._discard(file, why)
                continue
            cache.index(tuple(header["tokens"]), int(header["nbytes"]), file)
            found += 1
        if found:
            logger.info("%s: %d saved prompt states on disk", name, found)
        return found

    def read(self, entry: KeptPrompt) -> bytearray | None:
        """``entry``'s state from its file, or None (unreadable: logged and deleted)."""
        path = entry.path
        try:
            with open(path, "rb") as f:
                header = _header(f)
                data = bytearray(f.read(int(header["nbytes"]) + 1))
        except (OSError, ValueError, KeyError, TypeError, struct.error) as err:
            self._discard(path, f"unreadable ({err})")
            return None
        if len(data) != header["nbytes"] or zlib.crc32(data) != header["crc32"]:
            self._discard(path, "truncated or corrupt")
            return None
        os.utime(path)  # last use, for the budget's order
        with self._lock:
            self.reads += 1
        return data

    def save(self, name: str, tag: dict, states: list[tuple[tuple[int, ...], bytearray]]) -> int:
        """Write ``name``'s ``states`` (tokens and data) not yet on disk; then delete what
        ``KV_DISK_BYTES`` has no room for, oldest first. Returns the bytes written."""
        if not self.budget or not states:
            return 0
        folder = self._folder(name)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            logger.warning("could not save the prompt states of %s: %s", name, err)
            return 0
        for file in self._files(name):  # states of an older version of the file
            header = _read_header(file)
            if header is None or header.get("tag") != tag:
                self._discard(file, "of another model version or context")
        written = 0
        for tokens, data in states:
            if len(data) > self.budget:
                continue
            target = folder / (hashlib.sha256(repr(tokens).encode()).hexdigest()[:32] + SUFFIX)
            header = {"tag": tag, "tokens": list(tokens), "nbytes": len(data)}
            header["crc32"] = zlib.crc32(data)
            raw = json.dumps(header).encode()
            tmp = folder / f".{uuid.uuid4().hex}.part"
            try:
                with open(tmp, "wb") as f:
                    f.write(MAGIC + _LENGTH.pack(len(raw)) + raw)
                    f.write(data)
                os.replace(tmp, target)
            except OSError as err:
                tmp.unlink(missing_ok=True)
                logger.warning("could not save a prompt state of %s: %s", name, err)
                continue
            written += len(data)
        self._fit()
        logger.info("%s: saved %d prompt states (%d bytes) to disk", name, len(states), written)
        return written

    def remove(self, name: str) -> None:
        """Delete every state of ``name`` (its model file was deleted)."""
        shutil.rmtree(self._folder(name), ignore_errors=True)
        with contextlib.suppress(OSError):  # when it was the last: only models are left
            self.directory.rmdir()

    def usage(self) -> tuple[int, int]:
        """Saved states and their bytes on disk."""
        files = list(self.directory.glob(f"*/*{SUFFIX}"))
        return len(files), sum(_size(f) for f in files)

    def describe(self) -> dict:
        """What ``GET /status`` reports of the saved states."""
        prompts, nbytes = self.usage()
        return {
            "prompts": prompts,
            "bytes": nbytes,
            "budget_bytes": self.budget,
            "reads": self.reads,
            "discarded": self.discarded,
        }

    def prune(self, models: set[str]) -> None:
        """Delete the states of models whose file is gone (deleted while the worker was down)."""
        if self.directory.is_dir():
            for folder in self.directory.iterdir():
                if folder.is_dir() and folder.name not in models:
                    self.remove(folder.name)

    def _files(self, name: str) -> list[Path]:
        return list(self._folder(name).glob(f"*{SUFFIX}"))

    def _fit(self) -> None:
        """Delete the least recently used states until the budget holds."""
        with self._lock:
            files = sorted(self.directory.glob(f"*/*{SUFFIX}"), key=_mtime)
            total = sum(_size(f) for f in files)
            for file in files:
                if total <= self.budget:
                    break
                total -= _size(file)
                file.unlink(missing_ok=True)

    def _discard(self, path: Path, why: str) -> None:
        logger.warning("deleted saved prompt state %s: %s", path.name, why)
        path.unlink(missing_ok=True)
        with self._lock:
            self.discarded += 1


def _header(f) -> dict:
    """The header of the state file ``f`` (left at its data); ValueError if it has none."""
    if f.read(len(MAGIC)) != MAGIC:
        raise ValueError("not a saved prompt state")
    (length,) = _LENGTH.unpack(f.read(_LENGTH.size))
    header = json.loads(f.read(length))
    if not isinstance(header, dict) or not isinstance(header.get("tokens"), list):
        raise ValueError("bad header")
    header["size"] = len(MAGIC) + _LENGTH.size + length + int(header["nbytes"])
    return header


def _read_header(path: Path) -> dict | None:
    """``path``'s header, or None when it is unreadable or its size is not what it says."""
    try:
        with open(path, "rb") as f:
            header = _header(f)
        return header if _size(path) == header["size"] else None
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
