"""No circle among divcfg's modules: the import graph, read from the source with ast, is acyclic.

import-linter's layers see rooms, not modules; a circle inside one room (a module that imports a second one that
imports it back, often through an import inside a function) is invisible to it. Imports inside a function count
here, because they close a circle as surely as module-level ones, only later. Imports under ``if TYPE_CHECKING:``
do not: they never run.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_files() -> dict[str, Path]:
    rooms = [p.parent for p in ROOT.glob("*/__init__.py") if p.parent.name not in ("tests", "divcfg")]
    out = {"divcfg.cli": ROOT / "divcfg" / "cli.py", "divcfg": ROOT / "divcfg" / "__init__.py"}
    for room in rooms:
        for f in room.rglob("*.py"):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(["divcfg", *parts])] = f
    return out


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:``."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skip


def imports_of(path: Path, modules: set[str], package: str) -> set[str]:
    """The divcfg modules ``path`` imports (``from pkg import name`` counts pkg.name when that is a module)."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_blocks(tree)
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            # `import divcfg.a.b` imports divcfg.a.b; its parents' __init__ files are plain docstrings here.
            if name in modules:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    mods = set(files)
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = imports_of(path, mods, package) - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]; counter[0] += 1
        stack.append(root); on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]; counter[0] += 1
                    stack.append(child); on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop(); on_stack.discard(m); comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_the_graph_sees_the_rooms_and_their_lazy_imports():
    graph = import_graph()
    assert {"divcfg.model.policy", "divcfg.codec.offline", "divcfg.job.train", "divcfg.common.record"} <= set(graph)
    assert "divcfg.model.guidance" in graph["divcfg.model.policy"]
    # divcfg.cli imports its subcommands only by name (importlib), so it has no edges; the train command has many.
    assert "divcfg.job.topology" in graph["divcfg.job.train"]


def test_the_cycle_finder_finds_a_planted_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_circles():
    found = cycles(import_graph())
    assert not found, f"import circles among modules (move the shared part to a module both can import): {found}"
