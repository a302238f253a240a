"""One box: a newcomer's cold first request, TRANSPORT=http against TRANSPORT=auto.

Two measurements, both in the same run, on the filesystem of ``--dir``
(default: the system's temporary directory):

1. The cold first ``/user_request`` for Gemma 3 270M (or a tiny model with
   ``--quick``): for each round and each transport a fresh worker and store
   (separate processes, free loopback ports, an empty worker cache) in front
   of the same models directory; its time to first byte and total, the bytes
   through the socket, and the disk space the request took (the
   filesystem's free space before and after: a reflink shares its blocks).
2. Each way of placing a model file in a directory on this filesystem,
   alone: a hard link (the former choice, shown for reference: it shares the
   operator's inode, see ``model_store_server/transport/link.py``), a
   reflink, the kernel's ``copy_file_range``, and a copy through user space;
   the seconds to place the file and the disk space it took, or "not
   offered" where the filesystem refuses.

Prints medians and the ratios against ``http`` from the same run; with
``--out FILE`` also writes them as markdown.

    uv run python benchmarks/onebox.py --rounds 5
    uv run python benchmarks/onebox.py --rounds 5 --dir /tmp --dir /mnt/xfs   # and reflinks
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Services, emit, median, standalone_models  # noqa: E402

from model_store_server.transport.link import FICLONE  # noqa: E402


def free_bytes(directory: Path) -> int:
    """Free space on ``directory``'s filesystem once written data has its blocks and
    deleted files have given theirs back (both are deferred: delayed allocation, XFS's
    background inode reclaim), hence the sync."""
    os.sync()
    st = os.statvfs(directory)
    return st.f_bfree * st.f_frsize


def filesystem(directory: Path) -> str:
    """The filesystem type of ``directory`` (``df --output=fstype``)."""
    out = subprocess.run(
        ["df", "--output=fstype", str(directory)], capture_output=True, text=True, check=False
    ).stdout.split()
    return out[-1] if out else "?"


def first_request(tmp: Path, models: Path, model: str, transport: str, round_: int) -> dict:
    workdir = tmp / f"{transport}-{round_}"
    workdir.mkdir()
    services = Services(workdir, models, TRANSPORT=transport)
    try:
        before = free_bytes(tmp)
        first, total = services.ask(model, expect="load_from_store", max_tokens=1)
        status = services.worker_status()
        return {
            "ttfb": first,
            "total": total,
            "received": status["received"]["bytes"],
            "disk": max(0, before - free_bytes(tmp)),
        }
    finally:
        services.stop()
        shutil.rmtree(workdir / "cache", ignore_errors=True)  # the next round's space


def _link(source: Path, target: Path) -> None:
    os.link(source, target)


def _reflink(source: Path, target: Path) -> None:
    with open(source, "rb") as src, open(target, "xb") as dst:
        fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())


def _copy_file_range(source: Path, target: Path) -> None:
    with open(source, "rb") as src, open(target, "xb") as dst:
        size, done = os.fstat(src.fileno()).st_size, 0
        while done < size:
            step = os.copy_file_range(src.fileno(), dst.fileno(), size - done, done, done)
            if step == 0:
                raise OSError("short copy")
            done += step


def _user_copy(source: Path, target: Path) -> None:
    with open(source, "rb") as src, open(target, "xb") as dst:
        while chunk := src.read(4 * 1024 * 1024):
            dst.write(chunk)


PLACEMENTS = {
    "hard link (former; shares the operator's inode)": _link,
    "reflink (auto, where offered)": _reflink,
    "copy_file_range (auto, else)": _copy_file_range,
    "read/write through user space": _user_copy,
}


def placements(tmp: Path, source: Path, rounds: int) -> list[tuple[str, float | None, float]]:
    """(way, median seconds or None if not offered, median disk bytes it took)."""
    rows = []
    for way, place in PLACEMENTS.items():
        seconds, disk = [], []
        for _ in range(rounds):
            target = tmp / f"placed-{os.getpid()}.gguf"
            before = free_bytes(tmp)
            started = time.perf_counter()
            try:
                place(source, target)
            except OSError:
                target.unlink(missing_ok=True)
                break
            seconds.append(time.perf_counter() - started)
            disk.append(max(0, before - free_bytes(tmp)))
            target.unlink()
        rows.append((way, median(seconds) if seconds else None, median(disk) if disk else 0))
    return rows


def run_on(directory: Path | None, rounds: int, quick: bool) -> list[str]:
    """Both measurements on ``directory``'s filesystem; its markdown section."""
    with tempfile.TemporaryDirectory(prefix="onebox-", dir=directory) as tmp_name:
        tmp = Path(tmp_name)
        fstype = filesystem(tmp)
        models, model = standalone_models(tmp, quick)
        runs: dict[str, list[dict]] = {"http": [], "auto": []}
        for round_ in range(rounds):
            # Alternate the order, so neither transport always runs on a warmer page cache.
            order = ("http", "auto") if round_ % 2 == 0 else ("auto", "http")
            for transport in order:
                runs[transport].append(first_request(tmp, models, model, transport, round_))
        size = (models / model).stat().st_size
        placed = placements(tmp, models / model, rounds)

    rows = []
    for transport in ("http", "auto"):
        r = runs[transport]
        rows.append(
            (
                transport,
                median([x["ttfb"] for x in r]) * 1000,
                median([x["total"] for x in r]) * 1000,
                median([x["received"] for x in r]),
                median([x["disk"] for x in r]),
            )
        )
    ratio = rows[1][1] / rows[0][1]
    where = f"{fstype}" + (f" ({directory})" if directory else "")
    lines = [
        f"## {where}: cold first request ({model}, {size / 1e6:.1f} MB; medians of {rounds})",
        "",
        "| TRANSPORT | first byte (ms) | whole answer (ms) | bytes through the socket "
        "| disk the request took (MB) |",
        "|---|---|---|---|---|",
    ]
    for transport, ttfb, total, received, disk in rows:
        lines.append(
            f"| {transport} | {ttfb:.0f} | {total:.0f} | {received:,.0f} | {disk / 1e6:.0f} |"
        )
    lines += [
        "",
        f"First byte with `auto`: {ratio:.2f}x of `http` in the same run.",
        "",
        f"Placing the {size / 1e6:.1f} MB file on {fstype}, each way alone (medians of {rounds}):",
        "",
        "| way | ms | MB/s | disk it took (MB) |",
        "|---|---|---|---|",
    ]
    for way, seconds, disk in placed:
        if seconds is None:
            lines.append(f"| {way} | not offered by {fstype} | | |")
        else:
            # Where it took no disk, no data moved (a link, a clone): a rate would say nothing.
            rate = f"{size / seconds / 1e6:,.0f}" if disk > 0 and seconds > 0 else "-"
            lines.append(f"| {way} | {seconds * 1000:.2f} | {rate} | {disk / 1e6:.0f} |")
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a tiny model instead of Gemma")
    parser.add_argument(
        "--dir",
        type=Path,
        action="append",
        help="run on this directory's filesystem (repeat for several; default: the temp dir)",
    )
    parser.add_argument("--out", type=Path, help="also write the tables to this markdown file")
    args = parser.parse_args(argv)

    directories = args.dir or [None]
    load_before = os.getloadavg()[0]
    sections = [line for d in directories for line in run_on(d, args.rounds, args.quick)]
    load_after = os.getloadavg()[0]
    command = (
        "uv run python benchmarks/onebox.py"
        + (" --quick" if args.quick else "")
        + f" --rounds {args.rounds}"
        + "".join(f" --dir {d}" for d in args.dir or [])
    )
    lines = [
        "# One box: where the worker's copy of a model comes from",
        "",
        f"Generated by `{command}` on {os.cpu_count()} CPUs, load average "
        f"{load_before:.1f} at the start and {load_after:.1f} at the end (other jobs ran on "
        "this machine: the timings move with them; the bytes do not).",
        "",
        *sections,
    ]
    text = "\n".join(lines)
    return emit(text, args.out)


if __name__ == "__main__":
    sys.exit(main())
