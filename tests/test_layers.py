"""The library's imports go one way: command line -> web dashboard -> worker -> queue -> store -> vocabulary."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "workqueue"

# Lowest first. A module may import its own layer and the ones below, never one above.
LAYERS = ("vocabulary", "store", "queue", "worker", "facade", "web", "cli")


def layer(module: str) -> str:
    """The layer of a module of the package, by its dotted name."""
    parts = module.split(".")
    if module == "workqueue":
        return "facade"  # the public names, re-exported from every layer below the command line
    if parts[1] in ("cli", "__main__"):
        return "cli"
    if parts[1] == "web":
        return "web"  # the dashboard: the command line imports it, for the web command alone
    if parts[1] in ("store", "worker"):
        return parts[1]
    if parts[1] in ("queue", "producer", "metrics"):
        return "queue"
    return "vocabulary"


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)


def is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(path: Path) -> set[str]:
    """Every module of the package that `path` imports, anywhere in it (type-only imports under
    TYPE_CHECKING and imports inside functions included)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "workqueue"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "workqueue":
                continue
            for alias in node.names:
                found.add(f"{source}.{alias.name}" if is_module(f"{source}.{alias.name}") else source)
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(path): imports(path) for path in sorted(PACKAGE.rglob("*.py"))}


def test_no_module_imports_a_layer_above_its_own():
    """Every import of every library module, type-only ones included, goes to its own layer or one below."""
    upward = [
        f"{module} ({layer(module)}) imports {target} ({layer(target)})"
        for module, targets in graph().items() for target in sorted(targets)
        if LAYERS.index(layer(target)) > LAYERS.index(layer(module))
    ]
    assert upward == []


def test_the_import_graph_has_no_cycle():
    """No chain of imports, type-only ones included, leads from a module back to itself."""
    edges = graph()
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(edges.get(module, ())):
            if state.get(target) == "open":
                cycles.append(path[path.index(target):] + [target] if target in path else [module, target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_layer_rule_sees_every_module():
    """The layer map knows the package's folders: the store, the worker, the dashboard and the command line each have modules."""
    layers = {layer(module) for module in graph()}
    assert layers == set(LAYERS)
