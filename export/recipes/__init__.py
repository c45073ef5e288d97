"""Export recipes, one module per model family, registered by name.

Each recipe module defines::

    HELP: str                                   # one line for `edge-run export --help`
    class Config(RecipeConfig)                  # its options, each declared once (export.recipes._common)
    def add_arguments(parser: argparse.ArgumentParser) -> None    # the flags of Config
    def run(cfg: Config) -> pathlib.Path        # returns the finished artifact folder
    def main(argv=None) -> int                  # python -m export.recipes.<module>

and follows numbered stages: check -> build/load source -> export -> quantize -> verify -> write
(atomically, see export.artifacts.ArtifactDir; edge-model.json through edge.manifest.write) -> --add.
:func:`run` runs a recipe on a parsed `edge-run export <name>` command line. Modules are imported
lazily: torch loads only when a recipe runs.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from types import ModuleType

RECIPES: dict[str, str] = {
    "llm": "export.recipes.llm_gguf",
    "llm-onnx": "export.recipes.llm_onnx",
    "lcm": "export.recipes.lcm_onnx",
    "sam": "export.recipes.sam_onnx",
    "npu": "export.recipes.npu",
}


def available() -> dict[str, str]:
    """Recipes whose module exists in this checkout (name -> module path)."""
    import importlib.util

    return {n: m for n, m in RECIPES.items() if importlib.util.find_spec(m) is not None}


def load(name: str) -> ModuleType:
    from edge.errors import BadRequest

    have = available()
    if name not in have:
        raise BadRequest(f"unknown export recipe {name!r}; available: {', '.join(sorted(have))}.", param="recipe")
    return importlib.import_module(have[name])


def run(name: str, args: argparse.Namespace) -> Path:
    """Run recipe ``name`` on a parsed `edge-run export <name>` command line: its options become the
    recipe's typed Config, the runtime settings flags its ``settings``."""
    recipe = load(name)
    return recipe.run(recipe.Config.from_args(args))
