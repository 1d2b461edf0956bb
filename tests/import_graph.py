"""The project's import graph, read from the source with ``ast`` (nothing is imported or run).

Every ``import`` and ``from ... import`` counts, at module level and inside
functions alike (a function-level import is still a dependency; it only runs
later). Relative imports are resolved against the importing module, and
``from sscr import tracking`` names the module ``sscr.tracking`` when that is a
module (else the package ``sscr``).

    python tests/import_graph.py            # one line per module: its project imports
    python tests/import_graph.py --folders  # the same, with sscr.data, sscr.clouds, sscr.models as single nodes
"""

from __future__ import annotations

import argparse
import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("sscr", "flows")
#: Sub-packages that are one node of the folder graph.
FOLDERS = ("sscr.data", "sscr.clouds", "sscr.models")


def module_files(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> source file, for every ``.py`` file under ``packages``."""
    modules: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_package(module: str, modules: Mapping[str, Path]) -> bool:
    return modules[module].name == "__init__.py"


def _imported(node: ast.AST, module: str, modules: Mapping[str, Path]) -> set[str]:
    """Project modules one import statement names (resolved, filtered to ``modules``)."""
    names: set[str] = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            # ``import a.b.c`` runs a, a.b and a.b.c; the deepest one that is ours is what the code uses.
            parts = alias.name.split(".")
            for depth in range(len(parts), 0, -1):
                if ".".join(parts[:depth]) in modules:
                    names.add(".".join(parts[:depth]))
                    break
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            package = module if _is_package(module, modules) else module.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{node.module}" if node.module else package
        else:
            base = node.module or ""
        for alias in node.names:
            candidate = f"{base}.{alias.name}"
            if candidate in modules:
                names.add(candidate)
            elif base in modules:
                names.add(base)
    return names


def import_graph(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its source (itself excluded)."""
    modules = module_files(root, packages)
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        imports: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                imports |= _imported(node, module, modules)
        imports.discard(module)
        # A sub-module import also runs its package's __init__; that edge is implied, not listed.
        graph[module] = imports
    return graph


def node_of(module: str, folders: Iterable[str] = FOLDERS) -> str:
    """The folder-graph node of a module: its folder for ``sscr.data.*`` etc., else the module itself."""
    for folder in folders:
        if module == folder or module.startswith(folder + "."):
            return folder
    return module


def folder_graph(graph: Mapping[str, set[str]], folders: Iterable[str] = FOLDERS) -> dict[str, set[str]]:
    """The import graph with each folder collapsed to one node (edges inside a folder dropped)."""
    folders = tuple(folders)
    out: dict[str, set[str]] = {}
    for module, imports in graph.items():
        source = node_of(module, folders)
        targets = out.setdefault(source, set())
        targets |= {node_of(name, folders) for name in imports} - {source}
    return out


def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None if it is acyclic."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if state.get(target) is None:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def listing(graph: Mapping[str, set[str]]) -> str:
    """One line per module: ``module -> a, b, c``."""
    return "\n".join(f"{module} -> {', '.join(sorted(graph[module])) or '-'}" for module in sorted(graph))


def main() -> None:
    """Print the module (or folder) graph and the first cycle found."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folders", action="store_true", help="collapse sscr.data, sscr.clouds, sscr.models")
    args = parser.parse_args()
    graph = import_graph()
    if args.folders:
        graph = folder_graph(graph)
    print(listing(graph))
    cycle = find_cycle(graph)
    print(f"\ncycle: {' -> '.join(cycle)}" if cycle else "\nno cycle")


if __name__ == "__main__":
    main()
