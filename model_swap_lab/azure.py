"""Import the Azure Functions 2019 trace: invocations per function per minute, as requests.

The public trace (Shahrad et al., "Serverless in the Wild", ATC 2020;
``AzurePublicDatasetV2``) has one CSV per day,
``invocations_per_function_md.anon.dNN.csv``, with the header
``HashOwner,HashApp,HashFunction,Trigger,1,2,...,1440``: one row per function,
then its invocation count in each minute of the day. ``read_azure`` ranks the
functions by their invocations in the chosen minutes, maps the busiest ones to
the given models (the busiest function to the first model, and so on; the
rest are dropped), and turns each minute's count into that many requests at
seeded random instants within the minute. ``scale`` thins (or multiplies) the
counts: each minute's count x ``scale``, rounded at random so the expected
total is kept. Every problem is a ``TraceError`` naming the file and line.
"""

from __future__ import annotations

import csv
import io
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from model_swap_lab.trace import Request, TraceError, open_text

KEY_COLUMNS = ("HashOwner", "HashApp", "HashFunction", "Trigger")


@dataclass(frozen=True)
class AzureImport:
    requests: list[Request]
    functions: int  # functions in the file
    mapped: dict[str, str]  # model -> the function (owner/app/function hashes) behind it
    dropped_invocations: int  # of the chosen minutes, by functions beyond the models


def _minutes(header: list[str], name: str) -> list[int]:
    minutes = []
    for column, cell in enumerate(header[len(KEY_COLUMNS) :], start=1):
        if cell.strip() != str(column):
            raise TraceError(
                f"{name}:1: minute column {column} is named {cell!r}; expected "
                f"{','.join(KEY_COLUMNS)},1,2,... (the Azure Functions 2019 format)"
            )
        minutes.append(column)
    if not minutes:
        raise TraceError(f"{name}:1: no minute columns after {','.join(KEY_COLUMNS)}")
    return minutes


def read_azure(
    source: str | Path | TextIO,
    models: list[str],
    *,
    first_minute: int = 1,
    last_minute: int | None = None,
    scale: float = 1.0,
    seed: int = 0,
) -> AzureImport:
    """The requests of minutes ``first_minute``..``last_minute`` (1-based, inclusive;
    default: to the end), their timestamps from the first chosen minute's start."""
    if not models:
        raise ValueError("at least one model is needed to map functions to")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be > 0, not {scale!r}")
    name, text = open_text(source)
    reader = csv.reader(io.StringIO(text))
    header = [cell.strip() for cell in next(reader, [])]
    if tuple(header[: len(KEY_COLUMNS)]) != KEY_COLUMNS:
        raise TraceError(
            f"{name}:1: the header must start with {','.join(KEY_COLUMNS)}, not {header[:4]}"
        )
    minutes = _minutes(header, name)
    last = minutes[-1] if last_minute is None else last_minute
    if not 1 <= first_minute <= last <= minutes[-1]:
        raise ValueError(f"minutes {first_minute}-{last} are outside the file's 1-{minutes[-1]}")
    rows: list[tuple[int, str, list[int]]] = []
    for row in reader:
        if not row or all(not cell.strip() for cell in row):
            continue
        line = reader.line_num
        if len(row) != len(header):
            raise TraceError(f"{name}:{line}: {len(row)} columns, the header has {len(header)}")
        try:
            counts = [
                int(cell)
                for cell in row[len(KEY_COLUMNS) + first_minute - 1 : len(KEY_COLUMNS) + last]
            ]
        except ValueError:
            raise TraceError(f"{name}:{line}: invocation counts must be whole numbers") from None
        if any(count < 0 for count in counts):
            raise TraceError(f"{name}:{line}: a negative invocation count")
        rows.append((line, "/".join(row[:3]), counts))
    # Busiest first; ties in file order.
    ranked = sorted(rows, key=lambda r: -sum(r[2]))
    chosen, rest = ranked[: len(models)], ranked[len(models) :]
    rng = random.Random(seed)
    requests: list[Request] = []
    for model, (_, _, counts) in zip(models, chosen, strict=False):
        for offset, count in enumerate(counts):
            expected = count * scale
            count = int(expected) + (rng.random() < expected - int(expected))
            start = offset * 60.0
            requests += [
                Request(round(start + rng.random() * 60.0, 3), model) for _ in range(count)
            ]
    requests.sort(key=lambda request: request.timestamp)
    return AzureImport(
        requests=requests,
        functions=len(rows),
        mapped={model: function for model, (_, function, _) in zip(models, chosen, strict=False)},
        dropped_invocations=sum(sum(counts) for _, _, counts in rest),
    )
