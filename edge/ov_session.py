"""The OpenVINO runtime (the ``openvino`` package) as a session backend: ``--device openvino``.

OpenVINO reads our exported ``.onnx`` files directly (and the ``.xml``/``.bin`` IR the ``int8-ov`` export
precision writes) and compiles them for the CPU; :class:`OpenVinoSession` presents the surface the engines
use of an onnxruntime session (``run(output_names, feeds)``, ``get_inputs()``, ``get_outputs()``), so the
image, segment and ONNX chat engines need no OpenVINO-specific code. Sessions are made by
:func:`edge.devices.make_session` only.

- Threads: ``INFERENCE_NUM_THREADS`` = the scheduler's count, latency hint, one stream (one request at a
  time per compiled model, like onnxruntime's sequential mode). CPU pinning is off: the scheduler shares
  the cores with other programs and moves work between lanes; a pinned pool waits on a core another
  program took (the collapse edge/cpu.py measures for spinning pools).
- Cache: compiled models of files in a store go to ``<home>/cache/openvino`` (OpenVINO's own ``CACHE_DIR``,
  keyed by the file, its modification time and the compile options), so a second load imports the compiled
  blob instead of compiling again. Files outside a store (an export being verified, a bench folder) are
  compiled at each load: their blobs (GBs for an SD1.5 UNet) would never be loaded again.
- Precision: ``EDGE_OV_PRECISION`` = f32 | bf16 | f16 sets ``INFERENCE_PRECISION_HINT``; unset (or auto)
  keeps OpenVINO's default: bf16 on CPUs with AVX-512 BF16 / AMX, f32 otherwise -- except for graphs opened
  with ``keep_f32`` (the SAM decoder: its mask logits are cut at 0, and in bf16 its boundary pixels flipped,
  mask IoU 0.963-0.973 vs f32 against 0.98-0.999 with the bf16 encoder and an f32 decoder). A hint the CPU has no
  instructions for is ignored by OpenVINO (it computes f32); the precision actually used is recorded in
  the session's placement (``edge-run devices`` shows it).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import BadRequest, DeviceError

log = logging.getLogger("edge.devices")

PRECISION_ENV = "EDGE_OV_PRECISION"
PRECISIONS = ("f32", "bf16", "f16")
INSTALL_HINT = "pip install openvino (or pip install 'edge-run[openvino]')"
# OpenVINO element types -> onnxruntime's type strings (what OnnxModel and the adapters read)
_TYPES = {"f32": "tensor(float)", "f16": "tensor(float16)", "bf16": "tensor(bfloat16)", "f64": "tensor(double)",
          "i64": "tensor(int64)", "i32": "tensor(int32)", "i8": "tensor(int8)", "u8": "tensor(uint8)",
          "boolean": "tensor(bool)"}

_core: Any = None
_core_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def version() -> str | None:
    """The installed OpenVINO runtime's version, or None when it is not installed (without importing it:
    the CPU-only path never loads OpenVINO)."""
    import importlib.metadata
    import importlib.util

    try:
        if importlib.util.find_spec("openvino") is None:
            return None
        return importlib.metadata.version("openvino")
    except (ImportError, ValueError, importlib.metadata.PackageNotFoundError):
        return None


def missing_reason() -> str:
    return f"the openvino package is not installed ({INSTALL_HINT})"


def core():
    """One ``openvino.Core`` per process (it owns the CPU plugin and its thread pools)."""
    global _core
    if _core is None:
        with _core_lock:
            if _core is None:
                try:
                    import openvino as ov
                except ImportError:
                    raise DeviceError(f"`device` 'openvino': {missing_reason()}. Or use --device cpu.",
                                      param="device") from None
                _core = ov.Core()
    return _core


def precision_hint() -> str | None:
    """EDGE_OV_PRECISION (f32 | bf16 | f16), None = OpenVINO's default for this CPU."""
    text = os.environ.get(PRECISION_ENV, "").strip().lower()
    if text in ("", "auto", "default"):
        return None
    aliases = {"fp32": "f32", "fp16": "f16", "float32": "f32", "float16": "f16", "bfloat16": "bf16"}
    text = aliases.get(text, text)
    if text not in PRECISIONS:
        raise DeviceError(f"{PRECISION_ENV}={os.environ[PRECISION_ENV]!r} is not one of {', '.join(PRECISIONS)} "
                          "(or auto: OpenVINO's default, bf16 where the CPU has it). E.g. EDGE_OV_PRECISION=f32.",
                          param=PRECISION_ENV)
    return text


def precision_hint_text() -> str:
    """The precision setting in words (without importing OpenVINO)."""
    try:
        hint = precision_hint()
    except DeviceError:
        return f"{PRECISION_ENV}={os.environ.get(PRECISION_ENV)!r} is invalid (f32|bf16|f16|auto)"
    return f"{hint} ({PRECISION_ENV})" if hint else "OpenVINO's default (bf16 with AVX-512 BF16 / AMX, else f32)"


def effective_precision_text(*, keep_f32: bool = False) -> str:
    """What the CPU plugin will compute in here, and why (imports OpenVINO: for `edge-run devices`)."""
    default = default_precision()
    caps = [str(c) for c in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
    hint = precision_hint()
    if hint is None and keep_f32:
        return f"f32 (kept: this graph's outputs are cut at a threshold; OpenVINO's default here is {default})"
    if hint is None:
        return f"{default} (OpenVINO's default on this CPU; it offers {', '.join(c for c in caps if c.startswith(('FP', 'BF', 'INT')))})"
    cap = {"f32": "FP32", "bf16": "BF16", "f16": "FP16"}[hint]
    if cap not in caps:
        return f"f32 ({PRECISION_ENV}={hint} asked, but this CPU has no {cap} instructions: OpenVINO computes f32)"
    return f"{hint} ({PRECISION_ENV})"


@functools.lru_cache(maxsize=1)
def default_precision() -> str:
    """The inference precision OpenVINO's CPU plugin uses here with no hint (bf16 / f32): a fact of the CPU,
    asked once per process."""
    return _short(core().get_property("CPU", "INFERENCE_PRECISION_HINT"))


def _short(t: Any) -> str:
    """An OpenVINO element type (or its text) as f32 / bf16 / f16."""
    if hasattr(t, "get_type_name"):
        return t.get_type_name()
    s = str(t).lower()
    return {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}.get(s, s)


def compile_config(threads: int, cache_dir: Path | None, *, keep_f32: bool = False) -> dict[str, Any]:
    """The compile options: scheduler threads, latency, one stream, no pinning, the precision, the cache.
    ``keep_f32``: f32 unless EDGE_OV_PRECISION asks for another precision."""
    cfg: dict[str, Any] = {"INFERENCE_NUM_THREADS": max(1, int(threads)), "PERFORMANCE_HINT": "LATENCY",
                           "NUM_STREAMS": 1, "ENABLE_CPU_PINNING": False}
    hint = precision_hint() or ("f32" if keep_f32 else None)
    if hint:
        cfg["INFERENCE_PRECISION_HINT"] = hint
    if cache_dir is not None:
        cfg["CACHE_DIR"] = str(cache_dir)
    return cfg


@dataclass
class IO:
    """What ``get_inputs()`` / ``get_outputs()`` items look like (onnxruntime's NodeArg: name, shape, type)."""

    name: str
    shape: list
    type: str


def _shape(port) -> list:
    return [d.get_length() if d.is_static else None for d in port.get_partial_shape()]


def _output_name(port) -> str:
    names = sorted(port.get_names())
    plain = [n for n in names if not n.startswith("/")]  # ONNX graph outputs before internal tensor names
    return (plain or names or [port.get_any_name()])[0]


class OpenVinoSession:
    """A compiled OpenVINO model with onnxruntime's session surface. Thread-safe: each concurrent ``run``
    takes its own infer request from a small pool (a request holds its input tensors between calls)."""

    def __init__(self, compiled: Any, *, label: str, placement: dict):
        self.compiled = compiled
        self.label = label
        self.edge_placement = placement
        # ONNX input names: the Parameter's friendly name (a port's "any name" may be an internal tensor's)
        self._inputs = [IO(p.get_node().get_friendly_name(), _shape(p), _TYPES.get(p.get_element_type().get_type_name(),
                                                                                   "tensor(float)"))
                        for p in compiled.inputs]
        self._outputs = [IO(_output_name(p), _shape(p), _TYPES.get(p.get_element_type().get_type_name(),
                                                                   "tensor(float)"))
                         for p in compiled.outputs]
        self._in_index = {io.name: i for i, io in enumerate(self._inputs)}
        for i, p in enumerate(compiled.inputs):
            for n in p.get_names():
                self._in_index.setdefault(n, i)
        self._out_index = {io.name: i for i, io in enumerate(self._outputs)}
        for i, p in enumerate(compiled.outputs):
            for n in p.get_names():
                self._out_index.setdefault(n, i)
        self._idle: list = []
        self._lock = threading.Lock()

    def get_inputs(self) -> list[IO]:
        return list(self._inputs)

    def get_outputs(self) -> list[IO]:
        return list(self._outputs)

    def get_providers(self) -> list[str]:
        return ["OpenVINO"]

    def run(self, output_names, feeds: dict[str, Any], *_: Any, **__: Any) -> list[np.ndarray]:
        """Like ``InferenceSession.run``: outputs ``output_names`` (None = all) as numpy arrays."""
        if self.compiled is None:
            raise DeviceError(f"{self.label}: the OpenVINO model was released", param="model")
        bad = [k for k in feeds if k not in self._in_index]
        missing = [i.name for i in self._inputs if i.name not in feeds
                   and not any(self._in_index.get(k) == self._in_index[i.name] for k in feeds)]
        if bad or missing:
            raise BadRequest(f"{self.label}: inputs {bad or missing} are {'unknown' if bad else 'missing'}; the model "
                             f"takes {[i.name for i in self._inputs]}.", param=(bad or missing)[0])
        outs = [self._out_index[n] if n in self._out_index else self._unknown_output(n)
                for n in (output_names or [o.name for o in self._outputs])]
        with self._lock:
            req = self._idle.pop() if self._idle else None
        if req is None:
            req = self.compiled.create_infer_request()
        try:
            res = req.infer({self._in_index[k]: np.asarray(v) for k, v in feeds.items()})
            # copies (share_outputs=False): the request's tensors are reused by the next call
            return [np.asarray(res[self.compiled.outputs[i]]) for i in outs]
        finally:
            with self._lock:
                self._idle.append(req)

    def _unknown_output(self, name: str) -> int:
        raise BadRequest(f"{self.label}: output {name!r} is unknown; the model gives "
                         f"{[o.name for o in self._outputs]}.", param="output_names")

    def close(self) -> None:
        """Release the compiled model and its requests now (not at garbage collection)."""
        with self._lock:
            self._idle.clear()
        self.compiled = None


def open_session(path: Path, *, threads: int, cache_dir: Path | None, keep_f32: bool = False) -> OpenVinoSession:
    """Compile ``path`` (.onnx or .xml IR) for the CPU, from / into OpenVINO's cache in ``cache_dir``;
    ``keep_f32``: in f32 where OpenVINO's default is bf16 (EDGE_OV_PRECISION still decides when set)."""
    import time

    c = core()
    cfg = compile_config(threads, cache_dir, keep_f32=keep_f32)
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        compiled = c.compile_model(str(path), "CPU", cfg)
    except RuntimeError as e:
        raise DeviceError(f"`device` 'openvino': OpenVINO cannot compile {path.name}: {str(e).splitlines()[0][:300]}. "
                          "Use --device cpu (onnxruntime).", param="device") from None
    seconds = time.perf_counter() - t0
    try:
        cached = bool(compiled.get_property("LOADED_FROM_CACHE"))
    except Exception:  # noqa: BLE001 - older OpenVINO: the property does not exist
        cached = None
    placement = {"device": "openvino", "runtime": f"openvino {version()}",
                 "precision": _short(compiled.get_property("INFERENCE_PRECISION_HINT")),
                 "precision_source": PRECISION_ENV if precision_hint() else
                 "f32 kept: outputs cut at a threshold" if keep_f32 else "OpenVINO's default for this CPU",
                 "threads": int(compiled.get_property("INFERENCE_NUM_THREADS")), "compile_s": round(seconds, 3),
                 "cache": str(cache_dir) if cache_dir is not None else None, "loaded_from_cache": cached}
    log.info("%s: OpenVINO %s, %s threads, %s (%.2f s%s)", path.name, placement["precision"], placement["threads"],
             "from cache" if cached else "compiled", seconds, "" if cache_dir is None else f", cache {cache_dir}")
    return OpenVinoSession(compiled, label=path.name, placement=placement)
