"""Failover: a worker killed with SIGKILL under load, and the same worker restarted.

    uv run python benchmarks/failover.py                  # Gemma 3 270M copies (~1 minute)
    uv run python benchmarks/failover.py --quick          # tiny models
    uv run python benchmarks/failover.py --out benchmarks/FAILOVER.md

Two workers (processes) behind one store with the default HEALTH_INTERVAL
(2 s). Model ``fail-a`` is resident on worker 0, ``fail-b`` on worker 1. A
client sends one streamed ``/user_request`` for ``fail-a`` every 100 ms; worker 0
is killed with SIGKILL. Measured: how long until ``/status`` shows it down,
the first answer after the kill (placed again on worker 1: a push and a load),
every status code the client got over ``--seconds``; then worker 0 is
restarted on its port with its disk cache: how long until it is healthy and
re-read, and whether a request placed on it (worker 1 drained) loads from its
disk without a push. Repeated ``--repeats`` times; medians.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    emit,
    free_port,
    link_names,
    median,
    standalone_models,
    start_process,
    start_worker,
    stop_process,
)

NAMES = ("fail-a.gguf", "fail-b.gguf")


def worker_entry(store: str, worker_id: str) -> dict:
    workers = requests.get(f"{store}/status", timeout=10).json()["workers"]
    return next(w for w in workers if w["id"] == worker_id)


def ask(store: str, model: str) -> requests.Response:
    body = {"prompt": "Once upon a time", "model": model, "max_tokens": 4}
    return requests.post(f"{store}/user_request", json=body, timeout=120)


def one_run(tmp: Path, models: Path, number: int, seconds: float) -> dict:
    workdir = tmp / f"run-{number}"
    workdir.mkdir()
    ports = [free_port(), free_port()]
    ids = [f"127.0.0.1:{port}" for port in ports]
    workers = [start_worker(workdir, i, port) for i, port in enumerate(ports)]
    store_port = free_port()
    store = f"http://127.0.0.1:{store_port}"
    env = {
        "STORE_HOST": "127.0.0.1",
        "STORE_PORT": str(store_port),
        "MODELS_DIR": str(models),
        "WORKER_URLS": ",".join(f"http://{worker_id}" for worker_id in ids),
        "LOG_LEVEL": "WARNING",
    }
    python = sys.executable
    store_process = start_process(
        [python, "-m", "model_store_server.cli"], env, workdir / "store.log", f"{store}/health"
    )
    try:
        placed = {name: ask(store, name).headers["X-Worker"] for name in NAMES}
        assert placed[NAMES[0]] == f"http://{ids[0]}", placed
        statuses: list[int] = []
        after_kill: list[float] = []
        killed_at: list[float] = []
        stop = threading.Event()

        def client() -> None:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    code = ask(store, NAMES[0]).status_code
                except requests.RequestException:
                    code = 0
                statuses.append(code)
                if killed_at and sent > killed_at[0] and code == 200 and not after_kill:
                    after_kill.append(time.monotonic() - killed_at[0])
                time.sleep(0.1)

        thread = threading.Thread(target=client)
        thread.start()
        time.sleep(1.0)
        killed_at.append(time.monotonic())
        os.kill(workers[0].pid, signal.SIGKILL)
        workers[0].wait()
        while worker_entry(store, ids[0])["state"] != "down":
            time.sleep(0.02)
        detected = time.monotonic() - killed_at[0]
        time.sleep(max(0.0, seconds - detected))
        stop.set()
        thread.join()
        restarted_at = time.monotonic()
        workers[0] = start_worker(workdir, 0, ports[0])
        while True:
            entry = worker_entry(store, ids[0])
            if entry["state"] == "healthy" and entry["synced"]:
                break
            time.sleep(0.02)
        back = time.monotonic() - restarted_at
        requests.post(f"{store}/workers/{ids[1]}/drain", timeout=60).raise_for_status()
        again = ask(store, NAMES[0])
        received = requests.get(f"http://{ids[0]}/status", timeout=10).json()["received"]
        return {
            "detected_s": detected,
            "first_200_after_kill_s": after_kill[0] if after_kill else None,
            "requests": len(statuses),
            "non_200": sum(1 for code in statuses if code != 200),
            "back_s": back,
            "back_action": again.headers["X-Cache-Action"],
            "back_worker": again.headers["X-Worker"] == f"http://{ids[0]}",
            "back_pushed_bytes": received["bytes"],
        }
    finally:
        stop_process(store_process)
        for worker in workers:
            stop_process(worker)


def row(label: str, runs: list[dict], key: str, form: str) -> str:
    """One table row: the median of ``key`` over the runs, then each run's value."""
    values = [r[key] for r in runs]
    each = ", ".join(form.format(v).removesuffix(" s") for v in values)
    return f"| {label} | {form.format(median(values))} | {each} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="client time after the kill")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="failover-bench-") as tmp:
        tmp = Path(tmp)
        models, source = standalone_models(tmp, args.quick)
        link_names(models, models / source, NAMES)
        runs = [one_run(tmp, models, i, args.seconds) for i in range(args.repeats)]
    for run in runs:
        print(run, flush=True)
    firsts = [r["first_200_after_kill_s"] for r in runs if r["first_200_after_kill_s"]]
    lines = [
        "# Failover: a worker killed under load, then restarted",
        "",
        f"Generated by `uv run python benchmarks/failover.py{' --quick' if args.quick else ''}"
        f" --repeats {args.repeats} --seconds {args.seconds:g}` on {time.strftime('%Y-%m-%d')}.",
        "",
        f"Two workers, {source} copies, default HEALTH_INTERVAL (2 s); a client asks for the "
        "model resident on worker 0 every 100 ms while worker 0 is SIGKILLed; medians of "
        f"{args.repeats} runs.",
        "",
        "| figure | median | runs |",
        "|---|---|---|",
        row("kill to `down` in /status", runs, "detected_s", "{:.2f} s"),
        "| kill to the first 200 of a request sent after it (placed again: push + load) "
        f"| {median(firsts):.2f} s | {', '.join(f'{v:.2f}' for v in firsts)} |",
        row(f"requests in {args.seconds:g} s after the kill", runs, "requests", "{:g}"),
        row("of those, not 200", runs, "non_200", "{:g}"),
        row("restart to healthy and re-read", runs, "back_s", "{:.2f} s"),
        "| request on the restarted worker: action / bytes pushed to it | "
        + ", ".join(f"{r['back_action']} / {r['back_pushed_bytes']}" for r in runs)
        + " | |",
    ]
    text = "\n".join(lines) + "\n"
    return emit(text, args.out)


if __name__ == "__main__":
    sys.exit(main())
