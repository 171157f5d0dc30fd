"""The package's shape, read from its source: imports point down the layers (no cycle, counting
imports inside functions too), and no module reaches into another's private names."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "gaia_cas"


def _modules() -> dict[str, ast.Module]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        found[".".join(parts) or "__init__"] = ast.parse(path.read_text(), str(path))
    return found


def _imports(name: str, tree: ast.Module):
    """(imported module, imported names, line) for every import of the package, at any depth."""
    package_parts = name.split(".")[:-1] if name != "__init__" else []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package_parts[: len(package_parts) - (node.level - 1)] if node.level > 1 else package_parts
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            if node.module is None:  # from . import x, y: each is a module
                for alias in node.names:
                    yield ".".join([*base, alias.name]), [], node.lineno
            else:
                yield target, [a.name for a in node.names], node.lineno
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gaia_cas"):
            yield node.module.removeprefix("gaia_cas").lstrip(".") or "__init__", [a.name for a in node.names], node.lineno


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {name: set() for name in modules}
    for name, tree in modules.items():
        for target, _names, _line in _imports(name, tree):
            if target in modules and target != name:
                graph[name].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_even_through_imports_inside_functions():
    cycle = _cycle(_graph())
    assert cycle is None, " -> ".join(cycle)


def test_no_module_imports_another_modules_private_name():
    offenders = []
    for name, tree in _modules().items():
        for target, names, line in _imports(name, tree):
            for imported in names:
                if imported.startswith("_") and not imported.startswith("__"):
                    offenders.append(f"{name}:{line} imports {imported} from {target}")
    assert not offenders, offenders


def test_no_module_below_the_facade_imports_it():
    graph = _graph()
    top = {"repo", "cli", "parser", "nightly", "bench", "serve_bench", "chunk_bench", "__init__", "__main__", "samples"}
    importers = sorted(name for name, targets in graph.items() if "repo" in targets and name not in top)
    assert not importers, importers


def test_the_facade_is_thin():
    lines = (PACKAGE / "repo.py").read_text().count("\n")
    assert lines < 300, f"repo.py has {lines} lines"


def _private_attribute_uses(path: Path, module_names: set[str]):
    """``x._name`` where ``x`` is a module of the package imported by name (``from . import x``,
    ``from gaia_cas import x``, ``import gaia_cas.x``)."""
    tree = ast.parse(path.read_text(), str(path))
    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("gaia_cas")):
            for alias in node.names:
                if alias.name in module_names:
                    aliases.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = node.value
            if isinstance(base, ast.Name) and base.id in aliases:
                yield f"{path.name}:{node.lineno} {base.id}.{node.attr}"
            elif isinstance(base, ast.Attribute) and isinstance(base.value, ast.Name) and base.value.id == "gaia_cas":
                yield f"{path.name}:{node.lineno} gaia_cas.{base.attr}.{node.attr}"


def test_neither_the_package_nor_its_tests_reach_into_a_modules_private_names():
    module_names = {name.split(".")[-1] for name in _modules()}
    files = sorted(PACKAGE.rglob("*.py")) + sorted(Path(__file__).parent.glob("*.py"))
    offenders = [use for path in files for use in _private_attribute_uses(path, module_names)]
    assert not offenders, offenders
