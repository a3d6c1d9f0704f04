"""The package's import graph, read from the source (AST, nothing imported).

Used by ``tests/test_imports.py`` (no cycles, no function-level imports of
the package, the layer order of ``docs/architecture.rst``) and printable:

    python -m ckanext.archiver.testing.imports [--cycles]
"""

from __future__ import annotations

import ast
import dataclasses
import os
import sys
from typing import Iterator, Optional

PACKAGE = "ckanext.archiver"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP_DIRS = {"tests", "migration", "templates", "assets", "__pycache__"}


@dataclasses.dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module (a submodule when ``from pkg import sub``)
    line: int
    in_function: bool


def modules(root: str = ROOT) -> dict[str, str]:
    """{module name: file path} of the product modules (tests excluded)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(folder, name), root)[:-3].split(os.sep)
            if rel[-1] == "__init__":
                rel = rel[:-1]
            found[".".join([PACKAGE, *rel]) if rel else PACKAGE] = os.path.join(folder, name)
    return found


def _resolve(base: str, names: list[str], known: dict[str, str]) -> list[str]:
    out = []
    for name in names:
        candidate = f"{base}.{name}"
        out.append(candidate if candidate in known else base)
    return out


def imports_of(module: str, path: str, known: dict[str, str]) -> Iterator[Import]:
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]

    def visit(node: ast.AST, in_function: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield Import(module, alias.name, child.lineno, in_function)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                if base == PACKAGE or base.startswith(PACKAGE + "."):
                    targets = _resolve(base, [a.name for a in child.names], known)
                else:
                    targets = [base]
                for target in dict.fromkeys(targets):
                    yield Import(module, target, child.lineno, in_function)
            yield from visit(child, nested)

    yield from visit(tree, False)


def graph(root: str = ROOT) -> dict[str, list[Import]]:
    known = modules(root)
    return {name: list(imports_of(name, path, known)) for name, path in known.items()}


def internal_edges(g: dict[str, list[Import]]) -> dict[str, set[str]]:
    return {m: {i.target for i in imps if i.target in g and i.target != m}
            for m, imps in g.items()}


def cycles(g: dict[str, list[Import]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    edges = internal_edges(g)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return found


def short(name: str) -> str:
    return name[len(PACKAGE) + 1:] if name.startswith(PACKAGE + ".") else name


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = argv[argv.index("--root") + 1] if "--root" in argv else ROOT
    g = graph(root)
    edges = internal_edges(g)
    for module in sorted(g):
        targets = sorted(short(t) for t in edges[module])
        late = sorted({short(i.target) for i in g[module]
                       if i.in_function and i.target in g})
        line = f"{short(module) or PACKAGE} -> {', '.join(targets) or '-'}"
        if late:
            line += f"   [function-level: {', '.join(late)}]"
        print(line)
    found = cycles(g)
    print(f"cycles: {len(found)}")
    for component in found:
        print("  " + " <-> ".join(short(m) for m in component))
    return 0


if __name__ == "__main__":
    sys.exit(main())
