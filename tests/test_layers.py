"""The package's shape: no import cycles, layers that only point down, modules of one job and bounded size.

Every import counts: at the top of a module, inside a function, and those made only for type
checking, since each one ties the two modules together for whoever reads or changes them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "kosmos_grpc"

# Bottom to top: a module may import from its own layer or the ones below it, never above.
# The cycle check covers imports within a layer.
LAYERS: list[set[str]] = [
    {"errors", "_lazy", "quoting"},
    {"envelope", "bounds", "subjects", "subject_index", "tables", "runtime", "deadlines", "stream_watch", "schemas"},
    {"_grpc", "standard_services", "registry", "telemetry", "idempotency", "admission", "calls", "memory", "certs"},
    {"resilience", "config", "config_schema", "config_check"},
    {"bus", "preflight"},
    {"agent", "interceptors", "transport", "client", "context", "patterns"},
    {"servicer", "server"},
    {"child_output", "supervisor", "serving"},
    {"launcher", "commands", "commandline", "completion", "cli", "__init__"},
]
# Hand-written modules stay small enough to read at one sitting.
MAX_LINES = 420


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py")) if "_proto" not in path.parts}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports, anywhere in it."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            # The module itself when it is one, else the nearest package that holds it.
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target.startswith("kosmos_grpc") and target != "kosmos_grpc" and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    for index, layer in enumerate(LAYERS):
        if top in layer:
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle among the modules, or None."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        for imported in sorted(graph.get(module, ())):
            # A package's __init__ re-exports its modules: importing them is no cycle with it.
            if module.startswith(imported + ".") and imported in graph:
                continue
            found = visit(imported, [*path, module])
            if found:
                return found
        done.add(module)
        return None

    for module in sorted(graph):
        found = visit(module, [])
        if found:
            return found
    return None


def test_no_module_of_the_package_imports_itself_round_in_a_cycle() -> None:
    assert _cycle(_graph()) is None


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_imports_only_point_down_the_layers() -> None:
    upward = [
        f"{module} ({_layer(module)}) imports {imported} ({_layer(imported)})"
        for module, imports in _graph().items()
        for imported in imports
        if _layer(imported) > _layer(module)
    ]
    assert upward == []


@pytest.mark.parametrize(
    ("module", "allowed"), [("kosmos_grpc.quoting", set()), ("kosmos_grpc.errors", {"kosmos_grpc.quoting"})]
)
def test_errors_import_nothing_of_the_mesh(module: str, allowed: set[str]) -> None:
    """The errors, and the quoting of what they echo, are the bottom of everything."""
    assert _graph()[module] <= allowed


def test_the_bus_never_imports_the_client_or_the_server() -> None:
    above = {"kosmos_grpc.client", "kosmos_grpc.transport", "kosmos_grpc.servicer", "kosmos_grpc.server"}
    for module, imports in _graph().items():
        if module.startswith("kosmos_grpc.bus"):
            assert not imports & above, module


def test_every_module_is_small_and_says_its_job_first() -> None:
    for name, path in _modules().items():
        lines = path.read_text().count("\n")
        assert lines <= MAX_LINES, f"{name} has {lines} lines"
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc, f"{name} has no docstring"
