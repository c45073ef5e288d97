"""Helpers shared by the distillation tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import json
from pathlib import Path

THREADS = 2
CONFIGS = Path(__file__).resolve().parents[2] / "export" / "distill" / "configs"


def distill(argv: list[str], home: Path | None = None) -> int:
    """`edge-run distill [--home HOME] ...` in this process (the real CLI entry point; the runtime
    settings flags belong to `distill`, before the recipe)."""
    from edge.cli import main

    return main(["distill", *(["--home", str(home)] if home else []), *argv])


def report(folder: Path) -> dict:
    return json.loads((folder / "distill-report.json").read_text())
