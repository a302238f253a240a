"""The store's layering: no import cycle among its modules, the core's modules stay small."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "model_store_server"


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports at run time (not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in tree.body:  # top level only: function-local imports break cycles on purpose
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            found.update(n for n in names if n.startswith("model_store_server"))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("model_store_server"))
    return found


def test_no_import_cycle_among_the_stores_modules():
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph = {
        name: {i for i in _imports(path) if i in modules and i != name}
        for name, path in modules.items()
    }
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "visiting"
        for nxt in graph[name]:
            if state.get(nxt) == "visiting":
                raise AssertionError(" -> ".join([*trail, name, nxt]))
            if nxt not in state:
                visit(nxt, [*trail, name])
        state[name] = "done"

    for name in graph:
        if name not in state:
            visit(name, [])


def test_the_core_does_not_import_presentation_or_metrics():
    for path in (PACKAGE / "core").glob("*.py"):
        imported = _imports(path)
        assert not {"model_store_server.views", "model_store_server.metrics"} & imported, path


def test_the_core_modules_stay_small():
    sizes = {p.name: len(p.read_text().splitlines()) for p in (PACKAGE / "core").glob("*.py")}
    assert max(sizes.values()) <= 360, sizes


def test_the_ground_floor_imports_neither_service_nor_the_command_line():
    """``model_swap/`` is shared code: the services import it, never the other way round
    (imports inside functions included)."""
    above = ("model_store_server", "inference_worker", "model_swap_cli", "model_swap_lab")
    for path in (PACKAGE.parent / "model_swap").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert not [n for n in names if n.split(".")[0] in above], (path.name, names)
