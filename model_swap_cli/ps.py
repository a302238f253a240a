"""``model-swap ps`` and ``model-swap status``: what a running store holds and did lately.

``ps`` prints one row per model in the store's MODELS_DIR (like ``ollama
ps``): its state on the worker (resident, cached, available), its size,
how long it has been idle, whether it is pinned, the requests it served and
when it was last swapped in. ``status`` prints the policy, the tiers' use
against their budgets, whether the worker answers, and the last swaps. Both
read the store's ``GET /v1/models``, ``/status`` and ``/activity``; ``--json``
prints what they combined instead of a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime

import requests

DEFAULT_STORE = "http://127.0.0.1:8000"
RECENT_SWAPS = 5


class StoreUnreachable(Exception):
    pass


def _get(store: str, path: str, key: str | None) -> dict:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = requests.get(f"{store.rstrip('/')}{path}", headers=headers, timeout=10)
    except requests.RequestException as err:
        raise StoreUnreachable(f"cannot reach the store at {store}: {err}") from None
    if response.status_code != 200:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        raise StoreUnreachable(f"{path} answered {response.status_code}: {message}")
    return response.json()


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def human_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"


def ago(ts: str | None, now: datetime | None = None) -> str:
    if not ts:
        return "-"
    when = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    seconds = ((now or datetime.now(UTC)) - when).total_seconds()
    return f"{human_seconds(max(0.0, seconds))} ago"


def collect_ps(store: str, key: str | None = None) -> list[dict]:
    """One dict per model: name, state, size_bytes, idle_seconds, pinned, requests_served,
    last_swap (ISO time or None), generating, and for a resident model its kept prompts
    (``kv``: kept_prompts, kept_bytes, reused_tokens, restored_tokens; the worker's)."""
    models = _get(store, "/v1/models", key)["data"]
    status = _get(store, "/status", key)
    activity = _get(store, "/activity?probe=worker", key)
    kv = (activity.get("worker") or {}).get("kv") or {}
    resident = {entry["name"]: entry for entry in status["resident"]}
    cached = {entry["name"]: entry for entry in status["cached"]}
    workers = status.get("workers", [])
    holders: dict[str, list[str]] = {}  # model -> the workers holding it (resident first)
    for tier in ("resident", "cached"):
        for worker in (w for w in workers if w["state"] != "down"):  # what answers now
            for name in worker[tier]:
                if worker["id"] not in holders.setdefault(name, []):
                    holders[name].append(worker["id"])
                if tier == "resident" and name not in resident:
                    resident[name] = {"idle_seconds": None, "pinned": False, "generating": 0}
                    resident[name]["estimated_bytes"] = None
                elif name not in cached:
                    cached[name] = {"idle_seconds": None, "pinned": False, "generating": 0}
    rows = []
    for model in models:
        name = model["id"]
        entry = resident.get(name) or cached.get(name)
        seen = activity["models"].get(name, {})
        state = "resident" if name in resident else "cached" if name in cached else "available"
        rows.append(
            {
                "name": name,
                "state": state,
                "size_bytes": model["size_bytes"],
                "memory_bytes": resident[name]["estimated_bytes"] if name in resident else None,
                "idle_seconds": entry["idle_seconds"] if entry else None,
                "pinned": bool(entry and entry["pinned"]),
                "generating": entry["generating"] if entry else 0,
                "requests_served": seen.get("requests_served", 0),
                "last_swap": seen.get("last_swap"),
                "workers": holders.get(name, []) if len(workers) > 1 else [],
                "kv": (kv.get("resident") or {}).get(name) if name in resident else None,
            }
        )
    order = {"resident": 0, "cached": 1, "available": 2}
    return sorted(rows, key=lambda row: (order[row["state"]], row["name"]))


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = [
        "   ".join(str(cell).ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in (header, *rows)
    ]
    return "\n".join(lines)


def format_ps(rows: list[dict]) -> str:
    header = ["NAME", "STATE", "SIZE", "IDLE", "PINNED", "REQUESTS", "KEPT", "REUSED", "LAST SWAP"]
    several = any(row.get("workers") for row in rows)
    if several:
        header.append("WORKERS")
    body = [
        [
            row["name"],
            row["state"] + (" (generating)" if row["generating"] else ""),
            human_bytes(row["size_bytes"]),
            human_seconds(row["idle_seconds"]) if row["state"] != "available" else "-",
            "yes" if row["pinned"] else "no",
            str(row["requests_served"]),
            f"{kv['kept_prompts']} ({human_bytes(kv['kept_bytes'])})" if (kv := row["kv"]) else "-",
            f"{kv['reused_tokens']} tok" if kv else "-",
            ago(row["last_swap"]),
            *([",".join(row["workers"]) or "-"] if several else []),
        ]
        for row in rows
    ]
    return table(header, body)


def collect_status(store: str, key: str | None = None) -> dict:
    status = _get(store, "/status", key)
    activity = _get(store, "/activity?probe=worker", key)
    return {
        "store": store,
        "policy": status["policy"],
        "transport": status["transport"],
        "budgets": status["budgets"],
        "generating": status["generating"],
        "swapping": status["swapping"],
        "synced": status["synced"],
        "pushes": status.get("pushes", []),
        "worker": activity["worker"],
        "hits": activity["hits"],
        "decided": activity["decided"],
        "pushed_bytes": activity["pushed_bytes"],
        "recent_swaps": activity["swaps"][-RECENT_SWAPS:],
        "workers": status.get("workers", []),
    }


def _budget_line(name: str, budget: dict, unit: str) -> str:
    models = f"{budget['models']}/{budget['max_models'] if budget['max_models'] else '∞'} models"
    limit = human_bytes(budget["max_bytes"]) if budget["max_bytes"] else "no byte budget"
    ttl = f", ttl {budget['ttl_seconds']:g}s" if budget.get("ttl_seconds") else ""
    return f"  {name:<9}{models}, {human_bytes(budget['bytes'])} {unit} of {limit}{ttl}"


def format_status(info: dict) -> str:
    worker = info["worker"]
    reach = "reachable" if worker["reachable"] else f"UNREACHABLE ({worker.get('error')})"
    ratio = f"{info['hits'] / info['decided']:.0%}" if info["decided"] else "-"
    lines = [
        f"store     {info['store']}",
        f"policy    {info['policy']} (transport {info['transport']})",
        f"worker    {worker['url']} {reach}; store view {'in sync' if info['synced'] else 'stale'}",
        "budgets",
        _budget_line("cache", info["budgets"]["cache"], "on disk"),
        _budget_line("resident", info["budgets"]["resident"], "in memory"),
        f"now       {info['generating']} generating, "
        f"swap {'running' if info['swapping'] else 'idle'}",
        f"hits      {info['hits']} of {info['decided']} requests ({ratio}); "
        f"{human_bytes(info['pushed_bytes'])} pushed",
    ]
    kv = worker.get("kv") or {}
    if kv:
        counters = list((kv.get("resident") or {}).values())
        disk = kv.get("disk") or {}
        lines.append(
            f"kept      {sum(c['kept_prompts'] for c in counters)} prompts, "
            f"{human_bytes(sum(c['kept_bytes'] for c in counters))} in memory, "
            f"{disk.get('prompts', 0)} on disk ({human_bytes(disk.get('bytes', 0))}); "
            f"{sum(c['reused_tokens'] for c in counters)} prompt tokens reused"
        )
    if len(info.get("workers", [])) > 1:
        lines.append("workers")
        for worker in info["workers"]:
            queue = worker["queue"]
            error = f" ({worker['last_error']})" if worker["state"] == "down" else ""
            lines.append(
                f"  {worker['id']:<22}{worker['state']}{error}; "
                f"resident [{','.join(worker['resident'])}] cached [{','.join(worker['cached'])}]; "
                f"{queue['generating']} generating, {queue['waiting']} waiting"
            )
    for push in info["pushes"]:
        lines.append(
            f"pushing   {push['model']} {push['percent']}% of {human_bytes(push['bytes_total'])}"
        )
    lines.append("last swaps")
    if not info["recent_swaps"]:
        lines.append("  (none)")
    for swap in info["recent_swaps"]:
        # Evicted files get "-", models only unloaded from memory "v" (as on the dashboard).
        removed = [f"-{name} ({swap['reasons'][name]})" for name in swap["evicted"]]
        removed += [f"v{name} ({swap['reasons'][name]})" for name in swap["unloaded"]]
        rate = f" {swap['mb_per_s']:.1f} MB/s" if swap["mb_per_s"] else ""
        lines.append(
            f"  {swap['ts']}  {swap['action']:<22} {swap['model']:<24} "
            f"{swap['seconds'] * 1000:.0f} ms{rate} {' '.join(removed)}".rstrip()
            + ("" if swap["ok"] else "  FAILED")
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        default=os.environ.get("MODEL_SWAP_STORE", DEFAULT_STORE),
        help=f"the store's URL (default $MODEL_SWAP_STORE or {DEFAULT_STORE})",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _run(args, collect, render) -> int:
    key = os.environ.get("MODEL_SWAP_API_KEY") or None
    try:
        info = collect(args.store, key)
    except StoreUnreachable as err:
        print(f"model-swap {args.command}: {err}", file=sys.stderr)
        return 1
    print(json.dumps(info, indent=2) if args.json else render(info))
    return 0


def cmd_ps(args) -> int:
    return _run(args, collect_ps, format_ps)


def cmd_status(args) -> int:
    return _run(args, collect_status, format_status)


def register(commands) -> None:
    """Add ``ps`` and ``status`` to ``model-swap``'s subcommands."""
    ps = commands.add_parser("ps", help="list the store's models: state, size, idle, requests")
    add_arguments(ps)
    ps.set_defaults(func=cmd_ps)
    status = commands.add_parser("status", help="the store's policy, budgets, worker, last swaps")
    add_arguments(status)
    status.set_defaults(func=cmd_status)
