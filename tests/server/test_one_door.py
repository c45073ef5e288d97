"""The HTTP routes go through the Runtime only: a route module imports no engine module (it maps its body
onto the workload's request type and calls a Runtime method), and the Runtime is one plain class."""

from __future__ import annotations

import ast
from pathlib import Path

import edge

EDGE = Path(edge.__file__).resolve().parent
ROUTES = sorted((EDGE / "server").glob("*_routes.py"))
ALLOWED = ("edge.errors", "edge.jobs", "edge.server.")
"""Besides these, a route may import a workload's request module (edge.<workload>.request) and the PNG
format helper (edge.image.png); nothing that runs a model."""


def _edge_imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return [n for n in names if n == "edge" or n.startswith("edge.")]


def _allowed(name: str) -> bool:
    parts = name.split(".")
    if name.startswith(ALLOWED) or name == "edge.image.png" or name.startswith("edge.image.png."):
        return True
    return len(parts) >= 3 and parts[2] == "request"  # edge.<workload>.request[.Name]


def test_route_modules_import_no_engine_module():
    assert {p.stem for p in ROUTES} >= {"chat_routes", "image_routes", "segment_routes", "progress_routes"}
    bad = {p.name: [n for n in _edge_imports(p) if not _allowed(n)] for p in ROUTES}
    assert not any(bad.values()), f"route modules import engine modules: {bad}"


def test_routes_submit_no_job_of_their_own():
    """No JobSpec is built and no scheduler job submitted in a route: the Runtime's methods do that."""
    for p in ROUTES:
        text = p.read_text()
        assert "JobSpec(" not in text and ".submit(" not in text, p.name


def test_runtime_is_one_plain_class():
    from edge.api import Runtime

    assert Runtime.__bases__ == (object,)
    for name in ("chat_job", "complete_job", "chat", "imagine_job", "imagine", "segment_job", "segment",
                 "embed_job", "embed", "segment_stats", "submit"):
        assert name in Runtime.__dict__, name
