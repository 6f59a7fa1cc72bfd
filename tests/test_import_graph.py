"""equinet's modules import each other without a cycle: the graph is read with ``ast`` from every
file, function-level imports included (an import inside a function hides a cycle, it does not
remove it); only imports under ``if TYPE_CHECKING:`` are left out, because they never run."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "equinet"


def module_names(root: Path = PACKAGE) -> Dict[str, Path]:
    """``{"equinet.sampling.base": path, "equinet.sampling": .../__init__.py, ...}``."""
    names = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _type_checking_nodes(tree: ast.AST) -> Set[int]:
    skipped: Set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                skipped.update(id(n) for child in node.body for n in ast.walk(child))
    return skipped


def imports_of(name: str, path: Path, modules: Dict[str, Path]) -> Set[str]:
    """The equinet modules ``name`` imports anywhere in its file (``from pkg import sub`` names the
    submodule when ``sub`` is one, else the package's ``__init__``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped = _type_checking_nodes(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: Set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import equinet.a.b.c` names module a.b.c
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: Path = PACKAGE) -> Dict[str, Set[str]]:
    modules = module_names(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Every strongly connected component of more than one module (Tarjan), as sorted lists."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    cycles: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
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
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_equinet_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 30 and "equinet.study.run" in graph  # the walk found the package
    cycles = find_cycles(graph)
    assert not cycles, "import cycles in equinet/ (module -> the modules of its cycle it imports):\n" + "\n".join(
        "; ".join(f"{m} -> {sorted(graph[m] & set(c))}" for m in c) for c in cycles
    )


def _write(root: Path, files: Dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.parametrize(
    "files, cycle",
    [
        # a circle hidden by an import inside a function (study collect <-> run, as it once was)
        (
            {"__init__.py": "", "study/__init__.py": "", "study/run.py": "def f():\n    from equinet.study import collect\n",
             "study/collect.py": "from equinet.study.run import f\n"},
            ["equinet.study.collect", "equinet.study.run"],
        ),
        # relative imports, three modules
        (
            {"__init__.py": "", "a.py": "from . import b\n", "b.py": "from .c import x\n", "c.py": "import equinet.a\nx = 1\n"},
            ["equinet.a", "equinet.b", "equinet.c"],
        ),
        # under TYPE_CHECKING: never runs, no cycle
        (
            {"__init__.py": "", "a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from equinet.b import y\n",
             "b.py": "from equinet.a import TYPE_CHECKING\ny = 1\n"},
            None,
        ),
    ],
)
def test_cycle_finder_sees_function_level_and_relative_imports(tmp_path, files, cycle):
    _write(tmp_path / "equinet", files)
    cycles = find_cycles(import_graph(tmp_path / "equinet"))
    assert cycles == ([cycle] if cycle else [])
