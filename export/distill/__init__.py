"""Distillation recipes, one module per kind, registered by name (like export.recipes).

Each recipe module defines::

    HELP: str                                   # one line for `edge-run distill --help`
    Config: a dataclass (subclass of common.TrainConfig)   # every option, declared once
    def run(cfg: Config) -> pathlib.Path        # trains, evaluates before/after, writes the student

and writes an output folder that an export recipe takes as its source (`edge-run export ...`).
Training goes through ``accelerate`` so the same code runs on one CPU core or on many GPUs
(`accelerate launch -m export.distill <recipe> ...` or `torchrun ... -m export.distill ...`).
Modules are light to import: torch loads only when a recipe runs.
"""

from __future__ import annotations

import importlib
from types import ModuleType

RECIPES: dict[str, str] = {
    "lcm": "export.distill.lcm",
    "llm-kd": "export.distill.llm_kd",
    "sam-encoder": "export.distill.sam_encoder",
}


def load(name: str) -> ModuleType:
    """The recipe module registered as ``name``."""
    from edge.errors import BadRequest

    if name not in RECIPES:
        raise BadRequest(f"unknown distillation recipe {name!r}; available: {', '.join(RECIPES)}.", param="recipe")
    return importlib.import_module(RECIPES[name])
