"""Helpers shared by the chat-export tests (imported by name: `conftest` is ambiguous across folders)."""

from __future__ import annotations

import argparse

THREADS = 2


def recipe_args(**kw) -> argparse.Namespace:
    """The namespace `edge-run export llm|llm-onnx` would build."""
    base = dict(source=None, random_init=None, seed=0, to="gguf", quant=None, out=None, overwrite=False, add=False,
                model_id=None, threads=THREADS)
    base.update(kw)
    return argparse.Namespace(**base)
