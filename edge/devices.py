"""Execution-provider choice for onnxruntime sessions, with CPU fallback, and the thread budget.

``make_session(path, threads=..., device=...)`` is the one place ONNX sessions are created.
"""

from __future__ import annotations

import logging
from pathlib import Path

from edge.errors import DeviceError

log = logging.getLogger("edge.devices")
_warned: set[str] = set()


def session_options(threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, int(threads))
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return so


def make_session(path: str | Path, *, threads: int, device: str = "auto"):
    """An onnxruntime InferenceSession on the best available provider for ``device``.

    ``cpu`` and ``auto`` run on the CPU EP today (NPU selection comes with the NPU work); a named
    device that is not present raises DeviceError naming what is present.
    """
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device in ("auto", "cpu"):
        providers = ["CPUExecutionProvider"]
    else:
        raise DeviceError(f"`device` {device!r} is not available here; present: cpu "
                          f"(onnxruntime providers: {', '.join(available)}). Use --device cpu.",
                          param="device")
    return ort.InferenceSession(str(path), sess_options=session_options(threads), providers=providers)
