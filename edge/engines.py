"""The workload registry: each workload (chat, image, segment) is declared once, here, with its engine
classes and the modules of its front doors. Everything is named by import path and imported lazily,
so a chat-only user never loads onnxruntime; this module imports only edge.errors, so any module may
import it.

    WORKLOADS["image"].cli        # "edge.image.cli": add_parser(subparsers), run(args) -> int
    WORKLOADS["image"].api        # "edge.image.api": the workload's jobs, behind the Runtime's methods
    WORKLOADS["image"].routes     # "edge.server.image_routes": a module with a FastAPI `router`
    engine_class("image", "onnx") # the engine class for a (task, format) pair
    resolve("edge.image.api") -> the module (or the object, for "module:name")

A new workload adds one ``Workload(...)`` line below; `edge-run`, the server and the Runtime pick it up.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Workload:
    """One workload and where its parts live (import paths, "module" or "module:name")."""

    task: str  # the models.lock `task` it serves
    engines: dict[str, str] = field(default_factory=dict)  # model format -> engine class
    api: str | None = None  # the module of the workload's jobs (edge.api.Runtime's methods call it)
    cli: str | None = None  # `edge-run` command module: add_parser(subparsers); its commands' run(args) -> int
    routes: str | None = None  # server module with a FastAPI `router`


WORKLOADS: dict[str, Workload] = {w.task: w for w in (
    Workload("chat", {"gguf": "edge.chat.engine:LlamaChatEngine", "onnx": "edge.chat.onnx_engine:OnnxChatEngine"},
             api="edge.chat.api", cli="edge.chat.cli", routes="edge.server.chat_routes"),
    Workload("image", {"onnx": "edge.image.engine:ImageEngine"},
             api="edge.image.api", cli="edge.image.cli", routes="edge.server.image_routes"),
    Workload("segment", {"onnx": "edge.segment.engine:SegmentEngine"},
             api="edge.segment.api", cli="edge.segment.cli", routes="edge.server.segment_routes"),
)}

ENGINE_PATHS: dict[tuple[str, str], str] = {(w.task, fmt): path for w in WORKLOADS.values()
                                            for fmt, path in w.engines.items()}


def resolve(path: str) -> Any:
    """Import ``"module:name"`` and return the name (or the module itself for ``"module"``)."""
    module, _, name = path.partition(":")
    mod = importlib.import_module(module)
    return getattr(mod, name) if name else mod


def engine_class(task: str, fmt: str) -> type:
    """Return the engine class for a (task, format) pair."""
    from edge.errors import BadRequest

    path = ENGINE_PATHS.get((task, fmt))
    if path is None:
        known = ", ".join(f"{t}/{f}" for t, f in ENGINE_PATHS)
        raise BadRequest(f"no engine for task={task!r} format={fmt!r}; known: {known}.", param="model")
    return resolve(path)
