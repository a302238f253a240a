"""The layout's rules, over all five packages: layers call down, modules stay small.

- no import cycle among the modules of ``model_store_server``, ``inference_worker``,
  ``model_swap``, ``model_swap_lab`` and ``model_swap_cli``, counting every import:
  top level, under ``TYPE_CHECKING``, inside functions (a cycle hidden there is
  still two modules that need each other);
- which package may import which: ``model_swap`` (the ground floor) none of the
  others; each service neither the other service, nor the lab, nor the CLI; the
  lab not the worker, nor the CLI;
- no module over ``MAX_LINES`` lines;
- the store's core imports no presentation or metrics, and its modules stay small;
- the import paths users had before policies and transports got packages of their
  own still work, naming the same objects.

"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = (
    "model_store_server",
    "inference_worker",
    "model_swap",
    "model_swap_lab",
    "model_swap_cli",
)
MAX_LINES = 400

# What each package may import of the five (itself always).
MAY_IMPORT = {
    "model_swap": set(),
    "model_store_server": {"model_swap"},
    "inference_worker": {"model_swap"},
    "model_swap_lab": {"model_swap", "model_store_server"},
    "model_swap_cli": {"model_swap", "model_store_server", "inference_worker", "model_swap_lab"},
}


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def _imports(path: Path) -> set[str]:
    """The project's modules ``path`` imports, wherever the import statement is
    (``from pkg import name`` counts as ``pkg.name`` when that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.split(".")[0] in PACKAGES}


GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(name: str) -> None:
        index[name] = low[name] = len(index)
        stack.append(name)
        on_stack.add(name)
        for nxt in graph[name]:
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[name] = min(low[name], low[nxt])
            elif nxt in on_stack:
                low[name] = min(low[name], index[nxt])
        if low[name] == index[name]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == name:
                    break
            if len(component) > 1:
                found.append(component)

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return found


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [{"a", "b", "c"}]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_imports_are_read_wherever_they_are():
    imports = _imports(ROOT / "model_swap" / "service_main.py")
    assert "model_swap.serving" in imports and "model_swap.settings" in imports
    # tiers.py imports the store's settings under TYPE_CHECKING only: still an import.
    assert "model_store_server.config" in GRAPH["model_store_server.policies.tiers"]


def test_no_import_cycle_among_the_five_packages():
    cycles = [sorted(c) for c in _cycles(GRAPH)]
    assert not cycles, f"import cycles: {cycles}"


def test_each_package_imports_only_the_floors_below_it():
    wrong = []
    for name, imported in GRAPH.items():
        package = name.split(".")[0]
        allowed = MAY_IMPORT[package] | {package}
        wrong += [f"{name} -> {other}" for other in imported if other.split(".")[0] not in allowed]
    assert not wrong, wrong


def test_no_module_is_over_400_lines():
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines()) for path in MODULES.values()
    }
    over = {path: n for path, n in sizes.items() if n > MAX_LINES}
    assert not over, over


def test_the_core_does_not_import_presentation_or_metrics():
    for name, imported in GRAPH.items():
        if name.startswith("model_store_server.core."):
            assert not {"model_store_server.views", "model_store_server.metrics"} & imported, name


def test_the_core_modules_stay_small():
    core = ROOT / "model_store_server" / "core"
    sizes = {p.name: len(p.read_text().splitlines()) for p in core.glob("*.py")}
    assert max(sizes.values()) <= 360, sizes


def test_the_old_import_paths_still_work():
    """``model_store_server.cache_policy`` and ``model_store_server.transport`` were
    modules; they are now a re-export and a package, with the same names."""
    cache_policy = importlib.import_module("model_store_server.cache_policy")
    policies = importlib.import_module("model_store_server.policies")
    before = [
        "POLICIES",
        "AdaptivePolicy",
        "AgedGDSFPolicy",
        "CacheFull",
        "CachePolicy",
        "Clock",
        "GDSFPolicy",
        "GreedyDualPolicy",
        "LFUDAPolicy",
        "RecencyPolicy",
        "Tier",
        "create_policy",
        # Reachable as module attributes before, though not in __all__:
        "LRUPolicy",
        "NoEvictPolicy",
        "TTLPolicy",
        "LRUTTLPolicy",
        "CostModel",
        "EXPERTS",
        "DEFAULT_FREQ_HALF_LIFE_S",
    ]
    for name in before:
        assert hasattr(cache_policy, name), name
    for name in policies.__all__:
        assert getattr(cache_policy, name) is getattr(policies, name), name
    assert set(cache_policy.POLICIES) == {
        "lru",
        "no-evict",
        "ttl",
        "lru-ttl",
        "gdsf",
        "lfu-da",
        "gdsf-aged",
        "adaptive",
    }

    transport = importlib.import_module("model_store_server.transport")
    http = importlib.import_module("model_store_server.transport.http")
    for name in ("Transport", "HttpTransport", "PushResult"):
        assert getattr(transport, name) is getattr(http, name), name

    worker_client = importlib.import_module("model_store_server.worker_client")
    for name in ("WorkerClient", "WorkerError", "WorkerUnavailable", "WorkerUnproven"):
        assert hasattr(worker_client, name), name
    for name in ("InferenceStream", "SourceChanged", "WorkerReport"):
        assert hasattr(worker_client, name), name

    rdma_protocol = importlib.import_module("model_swap.rdma_protocol")
    for name in ("ControlChannel", "RdmaEndpoint", "EndpointFactory", "Offer", "encode"):
        assert hasattr(rdma_protocol, name), name
    rdma_verbs = importlib.import_module("model_swap.rdma_verbs")
    for name in ("PortChoice", "VerbsEndpoints", "RcEndpoint", "find_port", "check_memlock"):
        assert hasattr(rdma_verbs, name), name
