"""The package's shape, for a reader and for the test suite: the module tree with line counts, the
import graph between the project's modules and any cycle in it, the longest file and function.

    python scripts/layout.py            # tree, graph, cycles, longest file and function
    python scripts/layout.py --check    # exit status 1 on an import cycle

An edge is any `import` the module holds: at its top, inside a function, or under
`if TYPE_CHECKING:` (a type hint never runs, but a reader follows it all the same, so a circle of
types is still a circle). A module's edge goes to the module it names
(`from distill.methods.base import X` -> distill.methods.base; `from distill.data import splits` ->
distill.data.splits), as import-linter counts them. Hand-written (not pydeps or import-linter)
because neither is among the project's dependencies and the rule is twenty lines of `ast`.
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("distill", "students", "teachers")


def modules() -> Dict[str, Path]:
    """Dotted name -> file, for every module of the project's packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: Dict[str, Path]) -> Set[str]:
    """The project modules `name` imports, type-only imports included."""
    tree, out = ast.parse(path.read_text()), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module in known:
            subs = {f"{node.module}.{a.name}" for a in node.names} & set(known)
            out |= subs or {node.module}
            out |= {node.module} if len(subs) < len(node.names) else set()
    return out - {name}


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan), or a module importing itself."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                found.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    return found


def longest_function(known: Dict[str, Path]):
    """(lines, 'file:function') of the longest function or method."""
    best = (0, "")
    for path in known.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                best = max(best, (node.end_lineno - node.lineno + 1, f"{path.relative_to(ROOT)}:{node.name}"))
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="print only problems; exit 1 on an import cycle")
    args = parser.parse_args()
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    found = cycles(graph)
    if not args.check:
        for name, path in known.items():
            deps = ", ".join(sorted(graph[name])) or "-"
            print(f"{name:34s} {len(path.read_text().splitlines()):4d} lines  -> {deps}")
        sizes = sorted((len(p.read_text().splitlines()), str(p.relative_to(ROOT))) for p in known.values())
        print(f"\nmodules: {len(known)}; longest file: {sizes[-1][1]} ({sizes[-1][0]} lines); "
              "longest function: {1} ({0} lines)".format(*longest_function(known)))
    print("import cycles: " + ("; ".join(" <-> ".join(c) for c in found) if found else "none"))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
