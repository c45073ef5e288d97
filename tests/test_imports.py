"""The import graph of edge/ and export/ has no cycles, and its arrows point one way: nothing imports the
command line (edge.cli) but its entry points, and the runtime (edge/) imports nothing from export/ (only
the command line, which sits above both, does: `edge-run export`).

The graph is read with ``ast`` from the source, so it counts every import, also the ones inside a function
(a lazy import hides a cycle from Python, not from a reader): ``from a.b import c`` is an arrow to the
module ``a.b.c`` when that is a module, else to ``a.b``. A package's ``__init__`` re-exporting its own
submodules is not an arrow back from those submodules.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("edge", "export")
ENTRY_POINTS = {"edge.__main__"}
"""The only modules allowed to import edge.cli."""


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module ``name`` refers to (its longest prefix that is one), or None."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in modules:
            return ".".join(parts)
        parts.pop()
    return None


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its source."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package
                    pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    pkg = pkg[:len(pkg) - node.level + 1]
                    base = ".".join(pkg + ([base] if base else []))
                names = [f"{base}.{a.name}" for a in node.names] or [base]
            for name in names:
                target = _resolve(name, modules)
                if target is None or target == mod:
                    continue
                if is_pkg and target.startswith(mod + "."):
                    continue  # a package's __init__ re-exporting its own submodule
                graph[mod].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_cycle_and_a_lazy_import():
    """The checker itself: a two-module cycle through a function-level import is found."""
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    graph = import_graph()
    assert "edge.scheduler" in graph["edge.api"]  # a module-level import is an arrow
    assert "edge.server.app" in graph["edge.cli"]  # so is the lazy one inside cmd_serve


def test_no_import_cycles_in_edge_or_export():
    found = cycles(import_graph())
    assert not found, "import cycles (each line one cycle):\n" + "\n".join(" <-> ".join(c) for c in found)


def test_nothing_imports_the_command_line():
    graph = import_graph()
    bad = sorted(m for m, deps in graph.items() if "edge.cli" in deps and m not in ENTRY_POINTS)
    assert not bad, f"modules importing edge.cli (settings come from edge.config): {bad}"


def test_the_runtime_imports_nothing_from_export():
    graph = import_graph()
    bad = {m: sorted(d for d in deps if d.startswith("export")) for m, deps in graph.items()
           if m.startswith("edge") and m != "edge.cli"}
    assert not any(bad.values()), f"edge/ importing export/: { {m: d for m, d in bad.items() if d} }"
