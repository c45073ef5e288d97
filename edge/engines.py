"""Engines registered by task name, imported lazily so a chat-only user never loads onnxruntime."""

from __future__ import annotations

import importlib

ENGINE_PATHS: dict[tuple[str, str], str] = {
    ("chat", "gguf"): "edge.chat.engine:LlamaChatEngine",
    ("chat", "onnx"): "edge.chat.onnx_engine:OnnxChatEngine",
    ("image", "onnx"): "edge.image.engine:ImageEngine",
    ("segment", "onnx"): "edge.segment.engine:SegmentEngine",
}


def engine_class(task: str, fmt: str) -> type:
    """Return the engine class for a (task, format) pair."""
    from edge.errors import BadRequest

    path = ENGINE_PATHS.get((task, fmt))
    if path is None:
        known = ", ".join(f"{t}/{f}" for t, f in ENGINE_PATHS)
        raise BadRequest(f"no engine for task={task!r} format={fmt!r}; known: {known}.", param="model")
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)
