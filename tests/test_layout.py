"""Guards on the project's shape: the runtime never imports torch & co, and every registered export recipe,
engine and route module, and every models.lock entry, is exercised by a test.

"Exercised" is read from the tests' syntax trees, not from their text (a name in a comment or in another
word does not count):
- a recipe: a test imports its module (``from export.recipes import lcm_onnx``) and calls into it, or
  runs it from the command line (a list literal ``["export", "<name>", ...]``);
- an engine: a test imports its class by name and calls it or one of its attributes;
- a route module: every path its router serves is a string some test requests (a literal, or the start
  of an f-string);
- a models.lock entry: its id is a string literal in a test.
Each registered module is imported here too, so a registry entry naming nothing fails.
"""

from __future__ import annotations

import ast
import functools
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import edge
from edge.engines import ENGINE_PATHS, WORKLOADS, resolve
from edge.registry import Catalog
from export.recipes import RECIPES, available

ROOT = Path(__file__).resolve().parent.parent
TREES = {p: ast.parse(p.read_text(encoding="utf-8"), str(p)) for p in (ROOT / "tests").rglob("*.py")
         if p.name != Path(__file__).name}


@functools.cache
def _strings() -> frozenset[str]:
    """Every string literal in the tests (f-strings: their leading literal part)."""
    out: set[str] = set()
    for tree in TREES.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                out.add(node.value)
            elif isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
                out.add(str(node.values[0].value))
    return frozenset(out)


def _used_imports(module: str, name: str | None = None) -> list[Path]:
    """Test files that import ``module`` (or ``name`` from it) and then call it or read an attribute of it."""
    pkg, _, leaf = module.rpartition(".")
    hits = []
    for path, tree in TREES.items():
        bound: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                for a in node.names:
                    if (name is None and node.module == pkg and a.name == leaf) or \
                            (node.module == module and a.name == (name or a.name)):
                        bound.add(a.asname or a.name)
            elif isinstance(node, ast.Import) and name is None:
                bound |= {a.asname or a.name for a in node.names if a.name == module}
        if not bound:
            continue
        for node in ast.walk(tree):
            target = node.func if isinstance(node, ast.Call) else node if isinstance(node, ast.Attribute) else None
            while isinstance(target, ast.Attribute):
                target = target.value
            if isinstance(target, ast.Name) and target.id.split(".")[0] in {b.split(".")[0] for b in bound}:
                hits.append(path)
                break
    return hits


def _cli_runs(recipe: str) -> list[Path]:
    """Test files with a list literal holding "export", "<recipe>" one after the other."""
    hits = []
    for path, tree in TREES.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.List, ast.Tuple)):
                vals = [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
                if any(a == "export" and b == recipe for a, b in zip(vals, vals[1:])):
                    hits.append(path)
                    break
    return hits


def test_runtime_modules_never_import_torch_transformers_or_diffusers():
    mods = [m.name for m in pkgutil.walk_packages(edge.__path__, "edge.")]
    code = ("import importlib, sys\n"
            f"for m in {mods!r}:\n"
            "    importlib.import_module(m)\n"
            "bad = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'diffusers', 'optimum'})\n"
            "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"edge/ imported {out}"


def test_the_guard_tells_a_use_from_a_mention():
    """The evidence functions themselves: a mention in a comment or docstring is not a use."""
    assert _used_imports("export.recipes.sam_onnx") and _cli_runs("npu")
    assert not _cli_runs("no-such-recipe") and not _used_imports("edge.image.engine", "NoSuchEngine")


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_registered_export_recipe_is_run_by_a_test(name):
    assert name in available(), f"recipe {name!r} is registered but {RECIPES[name]} does not exist"
    assert _used_imports(RECIPES[name]) or _cli_runs(name), \
        f"export recipe {name!r} ({RECIPES[name]}): no test imports and calls it or runs `edge-run export {name}`"


@pytest.mark.parametrize("key", sorted(ENGINE_PATHS), ids="/".join)
def test_every_registered_engine_is_used_by_name_in_a_test(key):
    module, _, cls = ENGINE_PATHS[key].partition(":")
    assert isinstance(resolve(ENGINE_PATHS[key]), type)
    assert _used_imports(module, cls), f"engine {ENGINE_PATHS[key]} ({'/'.join(key)}): no test imports and uses it"


@pytest.mark.parametrize("module", sorted(w.routes for w in WORKLOADS.values() if w.routes)
                         + ["edge.server.progress_routes"])
def test_every_route_is_requested_by_a_test(module):
    strings = _strings()
    paths = [r.path for r in resolve(module).router.routes]
    assert paths, f"{module} serves no route"

    def requested(path: str) -> bool:
        pattern = re.compile("^(https?://[^/]+)?" + re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(path)) + r"(\?.*)?$")
        prefix = path.split("{")[0]
        return any(pattern.match(s) or ("{" in path and s.startswith(prefix) and len(s) >= len(prefix)) for s in strings)

    missing = [p for p in paths if not requested(p)]
    assert not missing, f"{module}: no test requests {missing}"


def test_every_models_lock_entry_is_tested():
    strings = _strings()
    missing = [e.id for e in Catalog(None) if not any(e.id in s for s in strings)]
    assert not missing, f"models.lock entries no test uses: {missing}"
