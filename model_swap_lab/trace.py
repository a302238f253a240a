"""Trace files: ``timestamp,model[,more columns]`` CSV, and model sizes.

A trace's timestamps are seconds from its start, non-decreasing. Columns after
``model`` (for example ``prompt_tokens,max_tokens``) are kept in ``extra`` and
written back as they were. Sizes come from a models directory (each file's
size) or a ``model,size_bytes`` CSV. Every problem is a ``TraceError`` naming
the file and line.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from model_swap.names import InvalidModelName, validate_model_name


class TraceError(ValueError):
    """A trace or sizes file that cannot be used; the message names the line."""


@dataclass(frozen=True)
class Request:
    timestamp: float
    model: str
    extra: dict[str, str] = field(default_factory=dict)
    line: int = 0


def read_trace(source: str | Path | TextIO, known: Iterable[str] | None = None) -> list[Request]:
    """Parse a trace; ``known``: the models it may name (others are an error)."""
    name, text = open_text(source)
    known = set(known) if known is not None else None
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise TraceError(f"{name}: empty trace (expected a header timestamp,model)") from None
    except csv.Error as err:
        raise TraceError(f"{name}:1: bad CSV: {err}") from None
    header = [column.strip() for column in header]
    if header[:2] != ["timestamp", "model"]:
        raise TraceError(f"{name}:1: the header must start with timestamp,model, not {header}")
    requests: list[Request] = []
    previous = 0.0
    next_start = reader.line_num + 1  # the line the next row starts on
    try:
        for row in reader:
            line, next_start = next_start, reader.line_num + 1
            if not row or all(not cell.strip() for cell in row):
                continue
            if any("\n" in cell or "\r" in cell for cell in row):
                raise TraceError(
                    f"{name}:{line}: bad CSV: the row spans several lines (an unclosed quote?)"
                )
            if len(row) != len(header):
                raise TraceError(f"{name}:{line}: {len(row)} columns, the header has {len(header)}")
            try:
                timestamp = float(row[0])
            except ValueError:
                raise TraceError(f"{name}:{line}: timestamp {row[0]!r} is not a number") from None
            if not math.isfinite(timestamp) or timestamp < 0:
                raise TraceError(f"{name}:{line}: timestamp {row[0]!r} must be >= 0")
            if timestamp < previous:
                raise TraceError(
                    f"{name}:{line}: timestamp {timestamp:g} is before the previous one "
                    f"({previous:g}); a trace must be sorted by time"
                )
            model = row[1].strip()
            if not model:
                raise TraceError(f"{name}:{line}: empty model name")
            if known is not None and model not in known:
                raise TraceError(f"{name}:{line}: unknown model {model!r} (no size for it)")
            extra = dict(zip(header[2:], row[2:], strict=True))
            requests.append(Request(timestamp, model, extra, line))
            previous = timestamp
    except csv.Error as err:
        raise TraceError(f"{name}:{reader.line_num}: bad CSV: {err}") from None
    return requests


def write_trace(requests: Iterable[Request], out: TextIO) -> None:
    requests = list(requests)
    extra = list(requests[0].extra) if requests else []
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["timestamp", "model", *extra])
    for request in requests:
        writer.writerow(
            [f"{request.timestamp:.3f}", request.model, *(request.extra[k] for k in extra)]
        )


def read_sizes(source: str | Path | TextIO) -> dict[str, int]:
    """``model,size_bytes`` CSV (with that header) to a dict."""
    name, text = open_text(source)
    reader = csv.reader(io.StringIO(text))
    header = [cell.strip() for cell in next(reader, [])]
    if header[:2] != ["model", "size_bytes"]:
        raise TraceError(f"{name}:1: the header must be model,size_bytes, not {header}")
    sizes: dict[str, int] = {}
    for row in reader:
        if not row:
            continue
        try:
            size = int(row[1])
            if size < 0:
                raise ValueError
        except (ValueError, IndexError):
            raise TraceError(
                f"{name}:{reader.line_num}: expected model,size_bytes with a byte count"
            ) from None
        sizes[row[0].strip()] = size
    return sizes


def write_sizes(sizes: dict[str, int], out: TextIO) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["model", "size_bytes"])
    for model, size in sizes.items():
        writer.writerow([model, size])


def sizes_from_dir(directory: str | Path) -> dict[str, int]:
    """Each servable model file's size in ``directory`` (the store's MODELS_DIR):
    regular files with a valid model name (``model_swap.names``), as the store lists."""
    directory = Path(directory)
    if not directory.is_dir():
        raise TraceError(f"{directory}: not a directory")
    sizes = {}
    for path in sorted(directory.iterdir()):
        try:
            validate_model_name(path.name)
        except InvalidModelName:
            continue  # the store does not serve it either (SwapService.available)
        if path.is_file():
            sizes[path.name] = path.stat().st_size
    return sizes


def open_text(source: str | Path | TextIO) -> tuple[str, str]:
    if isinstance(source, str | Path):
        try:
            return str(source), Path(source).read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise TraceError(f"{source}: cannot read: {err}") from None
    return getattr(source, "name", "<trace>"), source.read()
