"""Guards on the project's shape: the runtime never imports torch & co, and every registered model
family, engine and models.lock entry is exercised by some test."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import edge
from edge.engines import ENGINE_PATHS
from edge.registry import Catalog
from export.recipes import RECIPES, available

ROOT = Path(__file__).resolve().parent.parent
TESTS = "\n".join(p.read_text(errors="ignore") for p in (ROOT / "tests").rglob("*.py"))


def test_runtime_modules_never_import_torch_transformers_or_diffusers():
    mods = [m.name for m in pkgutil.walk_packages(edge.__path__, "edge.")]
    code = ("import importlib, sys\n"
            f"for m in {mods!r}:\n"
            "    importlib.import_module(m)\n"
            "bad = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'diffusers', 'optimum'})\n"
            "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"edge/ imported {out}"


def test_every_registered_export_recipe_is_tested():
    missing = [name for name, module in available().items()
               if module.rsplit(".", 1)[1] not in TESTS and f'"export", "{name}"' not in TESTS]
    assert not missing, f"export recipes without a test: {missing}"


def test_every_registered_engine_is_tested():
    missing = [path for path in ENGINE_PATHS.values()
               if Path(ROOT, *path.split(":")[0].split(".")).with_suffix(".py").exists()
               and path.split(":")[1] not in TESTS and path.split(":")[0] not in TESTS]
    assert not missing, f"engines without a test: {missing}"


def test_every_models_lock_entry_is_tested():
    missing = [e.id for e in Catalog(None) if e.id not in TESTS]
    assert not missing, f"models.lock entries no test uses: {missing}"
